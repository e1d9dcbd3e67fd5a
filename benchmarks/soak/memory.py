"""Where does the soak's memory go? A memory-only bisect (issue 17): the same encode loop, each variant in a fresh
process, resident memory (RSS) recorded after every round.

The soak (:mod:`benchmarks.soak.run`) saw RSS grow by +142% over 200k texts. This script separates the candidate
causes by running the same schedule of rounds (batch sizes cycled, the same sentence/passage mix in every round)
through variants that differ in one thing each:

- ``stock``: plain ``SentenceTransformer`` (the baseline every user has);
- ``st_leap``: the same weights through ``st_leap.from_pretrained`` at full depth (the stock forward pass);
- ``st_leap-exits``: thresholds cycled as in the soak (the exit loop);
- any variant with ``+trim``: glibc's ``malloc_trim(0)`` after every round, which hands freed heap pages back to
  the OS: growth that ``malloc_trim`` removes is memory the C allocator kept, not memory anything still holds;
- allocator settings, each set in the child's environment before it starts (see :data:`FLAG_ENV`):
  ``+arena2`` (``MALLOC_ARENA_MAX=2``: fewer glibc arenas), ``+mmap`` (``MALLOC_MMAP_THRESHOLD_=131072``; ``+mmap4m`` at 4 MiB: a
  fixed mmap threshold, so every large block, a batch's activations, is mapped and unmapped instead of reused from a heap
  that fragments), ``+mklmm`` (``MKL_DISABLE_FAST_MM=1``: MKL's own buffer cache off), ``+onednn0``
  (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``) and ``+jemalloc`` (``LD_PRELOAD`` of jemalloc instead of glibc malloc;
  ``--jemalloc`` names the library, by default the system's ``libjemalloc.so.2``, e.g. from Debian's
  ``libjemalloc2``), with ``+jemtune`` configured to keep freed pages (``MALLOC_CONF``).

Besides RSS each round records the number of live Python objects (``gc.get_objects()``) and of live torch tensors,
which grow when something in Python holds on to results.

Each round also records the seconds its ``encode`` took, so the variants' speed can be compared as well
(``--repeats N`` runs the whole list N times, alternating, and reports each variant's speed per batch size as a
median ratio to the first variant's in the same repeat). Memory is not disturbed by another job; the speed is: run
it alone when the speed columns matter.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.soak.memory --rounds 24 --round-texts 2000

Writes ``benchmarks/results/soak/memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_VARIANTS = (
    "stock",
    "st_leap",
    "st_leap-exits",
    "stock+trim",
    "st_leap-exits+trim",
    "st_leap-exits+arena2",
)

#: Environment a variant flag sets in its child process (read by glibc, MKL and oneDNN at start-up).
FLAG_ENV = {
    "arena2": {"MALLOC_ARENA_MAX": "2"},
    "mmap": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "mmap4m": {"MALLOC_MMAP_THRESHOLD_": "4194304"},
    # with +jemalloc: keep freed pages instead of returning them (no page faults on reuse), the setting of Intel's
    # PyTorch CPU tuning guide
    "jemtune": {"MALLOC_CONF": "oversize_threshold:1,background_thread:true,metadata_thp:auto,"
                               "dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000"},
    "mklmm": {"MKL_DISABLE_FAST_MM": "1"},
    "onednn0": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
}
KNOWN_FLAGS = {"trim", "jemalloc", *FLAG_ENV}


def variant_env(variant: str, jemalloc: str | None = None) -> dict[str, str]:
    """The environment variables variant ``base+flag+flag`` adds to its child process."""
    base, *flags = variant.split("+")
    if base not in ("stock", "st_leap", "st_leap-exits"):
        raise ValueError(f"Unknown variant base {base!r} in {variant!r}; use stock, st_leap or st_leap-exits.")
    unknown = set(flags) - KNOWN_FLAGS
    if unknown:
        raise ValueError(f"Unknown variant flag(s) {sorted(unknown)} in {variant!r}; known: {sorted(KNOWN_FLAGS)}.")
    if "jemtune" in flags and "jemalloc" not in flags:
        raise ValueError(f"Variant {variant!r}: +jemtune configures jemalloc; add +jemalloc.")
    env = {}
    for flag in flags:
        env.update(FLAG_ENV.get(flag, {}))
    if "jemalloc" in flags:
        import ctypes.util

        library = jemalloc or ctypes.util.find_library("jemalloc")
        if not library:
            raise ValueError(
                f"Variant {variant!r} needs jemalloc: install it (Debian/Ubuntu: apt-get install libjemalloc2) "
                "or pass --jemalloc /path/to/libjemalloc.so.2."
            )
        env["LD_PRELOAD"] = library
    return env


def allocator_env() -> dict[str, str]:
    """The memory-allocator settings in this process's environment (what :data:`FLAG_ENV` and ``+jemalloc`` set),
    recorded with every result: the same code grows or does not grow depending on them."""
    names = {name for env in FLAG_ENV.values() for name in env} | {"LD_PRELOAD"}
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def malloc_trim() -> bool:
    """Ask glibc to return freed heap memory to the OS; False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except OSError:
        return False


def mixed_texts(count: int, passage_every: int = 11, seed: int = 1) -> list[str]:
    """``count`` texts with one passage in every ``passage_every``: every contiguous window has the same mix, so
    rounds differ only in their batch size and threshold (the soak's first run drew rounds of sentences only and
    rounds heavy with passages, which is not the same work)."""
    from st_leap.resources import load_passages, load_sentences

    passages = load_passages(count // passage_every + 1, seed=seed)
    sentences = load_sentences(count, seed=seed)
    out, p, s = [], iter(passages), iter(sentences)
    for i in range(count):
        out.append(next(p) if i % passage_every == passage_every - 1 else next(s))
    return out


def child(variant: str, args: argparse.Namespace) -> list[dict]:
    """Run one variant's rounds in this process; returns one row per round."""
    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    import st_leap
    from st_leap.resources import resolve_model

    base, *flags = variant.split("+")
    path = resolve_model(args.model)
    model = SentenceTransformer(path, device="cpu") if base == "stock" else st_leap.from_pretrained(path, device="cpu")
    thresholds = [0.9, 0.95, None] if base == "st_leap-exits" else [None]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    # --fresh-texts: every round encodes texts never seen before (new padded shapes, as in the soak); otherwise
    # the rounds cycle through 4 rounds' worth of texts (the shapes repeat).
    texts = mixed_texts(args.round_texts * (args.rounds if args.fresh_texts else 4))
    rows = []
    for index in range(args.rounds):
        batch_size = batch_sizes[index % len(batch_sizes)]
        theta = thresholds[(index // len(batch_sizes)) % len(thresholds)]
        start = (index * args.round_texts) % len(texts)
        chunk = (texts + texts)[start : start + args.round_texts]
        kwargs = {} if base == "stock" else {"exit_threshold": theta}
        began = time.perf_counter()
        embeddings = model.encode(chunk, batch_size=batch_size, show_progress_bar=False, **kwargs)
        seconds = time.perf_counter() - began
        del embeddings
        gc.collect()
        row = {"round": index, "batch_size": batch_size, "exit_threshold": theta, "seconds": seconds, "rss_mib": rss_mib()}
        if "trim" in flags:
            malloc_trim()
            row["rss_mib_after_trim"] = rss_mib()
        objects = gc.get_objects()
        row["python_objects"] = len(objects)
        row["torch_tensors"] = sum(1 for o in objects if issubclass(type(o), torch.Tensor))
        del objects
        rows.append(row)
        print(json.dumps({"variant": variant, **row}), file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict], warmup: int) -> dict:
    """RSS after warm-up, at the end, growth; the same after trim where measured; live object growth."""
    after = rows[warmup:] or rows
    key = "rss_mib_after_trim" if "rss_mib_after_trim" in after[0] else "rss_mib"
    out = {
        "rss_mib_after_warmup": after[0]["rss_mib"],
        "rss_mib_end": after[-1]["rss_mib"],
        "rss_growth": after[-1]["rss_mib"] / after[0]["rss_mib"] - 1,
        "python_objects_growth": after[-1]["python_objects"] - after[0]["python_objects"],
        "torch_tensors_growth": after[-1]["torch_tensors"] - after[0]["torch_tensors"],
    }
    if key != "rss_mib":
        out["rss_mib_after_trim_end"] = after[-1][key]
        out["rss_growth_after_trim"] = after[-1][key] / after[0][key] - 1
    return out


def speed(repeats: dict[str, list[list[dict]]], warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and batch size: the median texts/s over the rounds after warm-up (all repeats), and the median
    over repeats of its ratio to the first variant's median in the same repeat (1.0 for the first variant)."""

    def rates(rows: list[dict], batch_size: int) -> list[float]:
        return [r["round_texts"] / r["seconds"] for r in rows[warmup:] or rows if r["batch_size"] == batch_size]

    first = next(iter(repeats))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant, runs in repeats.items():
        out[variant] = {}
        for batch_size in sorted({r["batch_size"] for r in runs[0]}):
            ratios = [statistics.median(rates(own, batch_size)) / statistics.median(rates(ref, batch_size))
                      for own, ref in zip(runs, repeats[first])]
            out[variant][f"batch {batch_size}"] = {
                "texts_per_second": statistics.median(rate for rows in runs for rate in rates(rows, batch_size)),
                "ratio_to_first": statistics.median(ratios),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--round-texts", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--warmup-rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh-texts", action="store_true", help="new texts every round instead of a 4-round cycle")
    parser.add_argument("--repeats", type=int, default=1, help="run the variant list this many times, alternating")
    parser.add_argument("--jemalloc", default=None, help="path of libjemalloc.so for +jemalloc variants")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps({"rows": child(args.child, args), "allocator_env": allocator_env()}))
        return 0

    from tqdm.auto import tqdm

    from benchmarks._common import command_line, meta_info, results_dir, write_result

    argv = sys.argv[1:] if argv is None else argv
    variants = args.variants.split(",")
    extra_env = {variant: variant_env(variant, args.jemalloc) for variant in variants}  # bad names fail first
    runs: dict[str, list[list[dict]]] = {variant: [] for variant in variants}
    with tqdm(total=len(variants) * args.repeats, desc="Variants") as progress:
        for _ in range(args.repeats):
            for variant in variants:
                env = {**os.environ, **extra_env[variant]}
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.soak.memory", *argv, "--child", variant],
                    env=env, stdout=subprocess.PIPE, check=True, text=True,
                )
                reply = json.loads(proc.stdout.strip().splitlines()[-1])
                if reply["allocator_env"] != allocator_env() | extra_env[variant]:  # what the child really ran under
                    raise RuntimeError(f"{variant} ran under {reply['allocator_env']}, not {extra_env[variant]}")
                runs[variant].append([{**row, "round_texts": args.round_texts} for row in reply["rows"]])
                progress.update()
    speeds = speed(runs, args.warmup_rounds)
    results = {
        variant: {"rounds": first, "summary": summarise(first, args.warmup_rounds), "env": extra_env[variant],
                  "speed": speeds[variant], "repeats": more}
        for variant, (first, *more) in runs.items()
    }
    command = command_line("benchmarks.soak.memory", argv)
    lines = [
        "# Soak memory bisect: where the RSS growth comes from",
        "",
        f"`{command}`",
        "",
        f"{args.rounds} rounds of {args.round_texts:,} texts (1 passage in 11; "
        f"{'new texts every round' if args.fresh_texts else 'the texts repeat every 4 rounds'}), batch sizes {args.batch_sizes} cycled, "
        f"{args.threads} threads; each variant in a fresh process. Growth is from the end of round "
        f"{args.warmup_rounds} (warm-up) to the last round.",
        "",
        "| variant | RSS after warm-up (MiB) | RSS at end | growth | after malloc_trim | live Python objects | live tensors |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, res in results.items():
        s = res["summary"]
        trim = f"{s['rss_mib_after_trim_end']:.0f} MiB ({s['rss_growth_after_trim']:+.1%})" if "rss_growth_after_trim" in s else "-"
        lines.append(
            f"| {variant} | {s['rss_mib_after_warmup']:.0f} | {s['rss_mib_end']:.0f} | {s['rss_growth']:+.1%} | {trim} "
            f"| {s['python_objects_growth']:+d} | {s['torch_tensors_growth']:+d} |"
        )
    batches = list(next(iter(speeds.values())))
    lines += [
        "",
        f"Speed: median texts/s over the rounds after warm-up, {args.repeats} repeat(s) alternating, and in brackets "
        f"the median ratio to `{variants[0]}` in the same repeat.",
        "",
        "| variant | " + " | ".join(batches) + " |",
        "|---|" + "---|" * len(batches),
        *(
            f"| {variant} | " + " | ".join(f"{v[b]['texts_per_second']:.0f} ({v[b]['ratio_to_first']:.2f}x)" for b in batches) + " |"
            for variant, v in speeds.items()
        ),
    ]
    result = {
        "run_info": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "results": results,
        "meta_info": meta_info(command),
    }
    write_result(args.out or results_dir("soak") / "memory", result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
