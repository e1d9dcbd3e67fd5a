from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_leap import resources
from st_leap.evaluation.beir import evaluate_beir, load_beir_folder
from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator
from st_leap.exit_policy import ExitStats, role_of
from st_leap.model import (
    EXIT_KEYS,
    MODEL_DEFAULT,
    describe_routes,
    effective_exit_settings,
    exit_kwargs,
    last_call_stats,
    load_model,
    model_name,
    route_modules,
    router_of,
)
from st_leap.reporting import run_info, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

TASKS = resources.TASKS
_LOCAL_BEIR = {name: short for short, name in TASKS.items() if short != "stsb"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub can be used: ``HF_HUB_OFFLINE`` unset and huggingface.co answering."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def task_names(tasks: Sequence[str] | str) -> list[str]:
    """mteb task names from short names (``stsb``, ``scifact``, ``nfcorpus``) or mteb names."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    names = []
    for task in tasks:
        key = task.strip()
        names.append(TASKS.get(key.lower(), key))
    return names


def load_local_task(task: Any, data_dir: str | Path | None = None) -> Any:
    """Fill an mteb task (STSBenchmark, SciFact or NFCorpus) with the local copies under the shared data folder.

    STSBenchmark reads ``stsb/test.tsv`` (quoting off; gold scores 0-5 as in mteb's copy), the retrieval tasks read
    ``beir/<name>`` in BEIR format. The task is marked as loaded, so mteb never goes to the Hub for it.

    Raises:
        ValueError: for a task that has no local copy.
        FileNotFoundError: when the local files are missing.
    """
    import datasets

    name = task.metadata.name
    base = Path(data_dir) if data_dir else resources.data_dir()
    if name == "STSBenchmark":
        s1, s2, scores = resources.load_stsb("test", normalize=False, folder=base)
        columns = {"sentence1": s1, "sentence2": s2, "score": scores}
        task.dataset = datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns)})
    elif name in _LOCAL_BEIR:
        corpus, queries, qrels = load_beir_folder(base / "beir" / _LOCAL_BEIR[name], split="test")
        task.dataset = {
            "default": {
                "test": {
                    "corpus": datasets.Dataset.from_dict(
                        {
                            "id": list(corpus),
                            "title": [doc["title"] for doc in corpus.values()],
                            "text": [doc["text"] for doc in corpus.values()],
                        }
                    ),
                    "queries": datasets.Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                    "relevant_docs": qrels,
                    "top_ranked": None,
                }
            }
        }
    else:
        raise ValueError(f"No local copy of mteb task {name!r}; local tasks: {sorted(['STSBenchmark', *_LOCAL_BEIR])}")
    task.data_loaded = True
    return task


def _wrapper_class() -> type:
    from mteb.models import SentenceTransformerEncoderWrapper

    class EarlyExitEncoderWrapper(SentenceTransformerEncoderWrapper):
        """mteb's sentence-transformers wrapper that also counts exit layers per task and per role (mteb encodes
        retrieval queries with ``encode_query`` and documents with ``encode_document``, so per-role exit settings
        apply by themselves)."""

        def __init__(self, model: SentenceTransformer, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            self.exit_counters: dict[str, ExitStats] = {}
            self.role_counters: dict[str, dict[str, ExitStats]] = {}

        def encode(self, inputs: Any, *, task_metadata: Any, prompt_type: Any = None, **kwargs: Any) -> Any:
            embeddings = super().encode(inputs, task_metadata=task_metadata, prompt_type=prompt_type, **kwargs)
            role = role_of(getattr(prompt_type, "value", prompt_type))
            stats = last_call_stats(self.model, len(embeddings), role)
            merge_layers(self.exit_counters.setdefault(task_metadata.name, ExitStats()), stats)
            self.role_counters.setdefault(task_metadata.name, {}).setdefault(role, ExitStats()).merge(stats)
            return embeddings

    return EarlyExitEncoderWrapper


def merge_layers(total: ExitStats, stats: ExitStats) -> ExitStats:
    """Add ``stats`` to ``total`` as layers run per text, even when the two come from encoders of different depths
    (the query and document routes of a query encoder for a kept index): the shallower counts are padded to the
    deeper depth, so a text that ran 2 layers counts at layer 2 of 6. Returns ``total``."""
    depth = max(total.num_layers, stats.num_layers)
    if total.num_layers and total.num_layers < depth:
        total.counts, total.num_layers = total.counts + [0] * (depth - total.num_layers), depth
    counts = stats.counts + [0] * (depth - stats.num_layers) if stats.num_layers else stats.counts
    return total.merge(ExitStats(depth if stats.num_layers else 0, list(counts)))


def router_exit_settings(model: SentenceTransformer) -> dict[str, dict[str, Any]]:
    """The exit settings a query encoder for a kept index (a ``Router`` model) runs with, per role: its query route's
    saved settings for ``"query"``; the index model (``"document"``) has none (``None``: full depth)."""
    from st_leap.modules import EarlyExitTransformer

    first = next(iter(route_modules(model, "query")), None)
    query = first.exit_settings_for("query") if isinstance(first, EarlyExitTransformer) else dict.fromkeys(EXIT_KEYS)
    return {key: {"query": query[key], "document": None} for key in EXIT_KEYS}


def mteb_wrapper(
    model: SentenceTransformer,
    *,
    name: str | None = None,
    revision: str | None = None,
    exit_settings: dict[str, Any] | None = None,
) -> Any:
    """Wrap an st_leap model for ``mteb.evaluate``; its ``ModelMeta`` names the exit settings.

    The exit settings go into ``ModelMeta.experiment_kwargs``, so each operating point gets its own mteb result
    folder (``results/<name>/<revision>/<experiment>/``) and a run at one threshold is never taken for another.
    """
    wrapper = _wrapper_class()(model)
    meta = wrapper.mteb_model_meta
    if exit_settings is not None:
        settings = exit_settings
    else:
        settings = router_exit_settings(model) if router_of(model) is not None else effective_exit_settings(model, {})
    experiment: dict[str, Any] = {}
    for key, value in settings.items():
        for role, role_value in (value.items() if isinstance(value, dict) else [(None, value)]):
            name_key = f"{key}_{role}" if role else key
            experiment[name_key] = "full" if key == "exit_threshold" and role_value is None else role_value
    experiment = {key: value for key, value in experiment.items() if value is not None}
    wrapper.mteb_model_meta = meta.model_copy(
        update={
            "name": name or meta.name or model_name(model),
            "revision": revision or meta.revision or "no_revision_available",
            "experiment_kwargs": experiment or None,
        }
    )
    return wrapper


def _load_for_mteb(
    name: str, revision: str | None = None, *, model_path: str, device: str | None = None, **exit_settings: Any
) -> Any:
    """mteb ``ModelMeta`` loader: the st_leap model at ``model_path`` with ``exit_settings`` as its defaults,
    wrapped so that mteb names and caches it by those settings."""
    from st_leap.model import from_pretrained

    model = from_pretrained(model_path, device=device, **exit_settings)
    return mteb_wrapper(model, name=name, revision=revision)


def local_revision(model_path: str | Path) -> str:
    """A revision for a local model folder: a short hash of its weights and configs, so that mteb never serves the
    results of an earlier model saved to the same folder."""
    import hashlib

    folder = Path(model_path)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin") and "checkpoints" not in path.parts:
            digest.update(str(path.relative_to(folder)).encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return "local-" + digest.hexdigest()[:12]


def model_meta(
    model_path: str | Path, *, name: str | None = None, revision: str | None = None, **exit_settings: Any
) -> Any:
    """An mteb ``ModelMeta`` for a saved st_leap model folder (or Hub id), for plain ``mteb.evaluate``.

    Its loader loads the model with ``exit_settings`` as defaults, and the settings are its ``experiment_kwargs``,
    so mteb's own result cache keys on them: ``mteb.evaluate(meta.load_model(exit_threshold=0.9), tasks)`` after a
    full-depth run computes a new result instead of returning the cached one. (Exit settings passed as
    ``encode_kwargs`` are invisible to mteb's cache; give them here.) ``mteb.get_model(<local folder>)`` has no
    loader for a folder; this is what to call instead.

    Args:
        model_path: Saved st_leap model folder or Hub id.
        name: Name for mteb's results (default ``st_leap/<folder name>``, never the base model's name).
        revision: Revision (default: a hash of the folder's weights and configs, or ``None`` for a Hub id).
        **exit_settings: ``exit_threshold``, ``exit_patience``, ``exit_min_layer``, ``truncate_layers`` (one value or
            per role); more can be given later to ``meta.load_model(...)``.
    """
    from functools import partial

    from mteb.models import ModelMeta

    from st_leap.model import EXIT_KEYS

    unknown = sorted(set(exit_settings) - set(EXIT_KEYS))
    if unknown:
        raise ValueError(f"unknown exit setting(s) {unknown}; choose from {list(EXIT_KEYS)}")
    path = str(model_path)
    local = Path(path).exists()
    return ModelMeta.create_empty(
        overwrites=dict(
            name=name or (f"st_leap/{Path(path).resolve().name}" if local else path),
            revision=revision or (local_revision(path) if local else None),
            loader=partial(_load_for_mteb, model_path=path),
            experiment_kwargs=exit_settings or None,
            framework=["Sentence Transformers", "PyTorch"],
        )
    )


def run_mteb(
    model: SentenceTransformer | str,
    tasks: Sequence[str] | str = ("stsb", "scifact", "nfcorpus"),
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    source: str = "auto",
    output_folder: str | Path | None = None,
    name: str | None = None,
    revision: str | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = True,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run mteb tasks on an st_leap model at one exit setting.

    ``mteb.evaluate(..., encode_kwargs={exit settings}, cache=None)`` does the work: no result cache is read, so a
    result for another threshold can never be served. Exit settings left out are not passed, so the model's saved
    defaults apply (and are recorded).

    A query encoder for a kept index (a ``Router`` model, :func:`st_leap.model.router_of`) is evaluated as saved,
    as mteb itself evaluates it: retrieval queries go through ``encode_query`` (its query route), documents through
    ``encode_document`` and STS pairs through plain ``encode`` (both the index model). Exit settings are refused
    for it; the summary's ``routes`` says what ran for each role.

    Args:
        model: st_leap model, or a path / Hub id (loaded with :func:`st_leap.from_pretrained`).
        tasks: Short names (``stsb``, ``scifact``, ``nfcorpus``) or mteb task names, list or comma-separated.
        exit_threshold: theta; ``None`` = full depth; left out, the model's saved default.
        exit_patience: k; left out, the model's saved default.
        exit_min_layer: l_min; left out, the model's saved default.
        source: ``"hub"``, ``"local"`` (the shared data folder) or ``"auto"`` (local when the Hub is unreachable).
        output_folder: If given, results are written there in mteb's own format
            (``results/<model>/<revision>/<experiment>/<Task>.json`` plus ``model_meta.json``), ready for the
            leaderboard, and a summary ``st_leap_summary_<experiment>.json``.
        name: Model name for the metadata (default: the model card name or the folder name).
        revision: Model revision for the metadata.
        batch_size: Encode batch size.
        show_progress_bar: Show mteb's and sentence-transformers' progress bars.
        data_dir: Shared data folder for ``source="local"`` (default: :func:`st_leap.resources.data_dir`).

    Returns:
        ``{"model", "exit_settings", "source", "tasks": {task: {"main_score", "scores", "exit_stats", ...}},
        "run_info"}``; ``main_score`` is a fraction as mteb stores it (x100 for the leaderboard's numbers).
    """
    import mteb

    if source not in ("auto", "hub", "local"):
        raise ValueError(f"source must be 'auto', 'hub' or 'local', got {source!r}")
    st_model = load_model(model, allow_router=True)
    kwargs = exit_kwargs(exit_threshold, exit_patience, exit_min_layer)
    routes = describe_routes(st_model)
    if routes is not None:
        if kwargs:
            raise ValueError(
                "a query encoder for a kept index (a Router model) is evaluated as saved; exit settings apply to "
                "its query route only: save the query route with the settings you want, or leave them out"
            )
        settings = router_exit_settings(st_model)
    else:
        settings = effective_exit_settings(st_model, kwargs)
    display_name = name or model_name(st_model, model if isinstance(model, str) else None)
    wrapper = mteb_wrapper(st_model, name=display_name, revision=revision, exit_settings=settings)

    use_local = source == "local" or (source == "auto" and not hub_reachable())
    mteb_tasks = list(mteb.get_tasks(tasks=task_names(tasks)))
    if use_local:
        mteb_tasks = [load_local_task(task, data_dir) for task in mteb_tasks]

    encode_kwargs = {"batch_size": batch_size, "show_progress_bar": show_progress_bar, **kwargs}
    start = time.perf_counter()
    result = mteb.evaluate(
        wrapper,
        mteb_tasks,
        encode_kwargs=encode_kwargs,
        cache=None,
        show_progress_bar=show_progress_bar,
    )
    seconds = time.perf_counter() - start

    summary: dict[str, Any] = {
        "measured": "mteb.evaluate main scores with early exit"
        if routes is None
        else "mteb.evaluate main scores of a query encoder for a kept index, as saved",
        "model": display_name,
        "model_meta": {
            "name": wrapper.mteb_model_meta.name,
            "revision": wrapper.mteb_model_meta.revision,
            "experiment_kwargs": dict(wrapper.mteb_model_meta.experiment_kwargs or {}),
            "experiment_name": wrapper.mteb_model_meta.experiment_name,
        },
        "exit_settings": settings,
        "source": "local" if use_local else "hub",
        "tasks": {},
        "seconds": seconds,
        "run_info": run_info(batch_size=batch_size, encode_kwargs=encode_kwargs),
    }
    if routes is not None:
        summary["routes"] = routes
    cache = None
    if output_folder is not None:
        cache = mteb.ResultCache(cache_path=Path(output_folder))
    for task_result in result.task_results:
        if use_local:  # the local copy was evaluated, not the Hub revision mteb's metadata names
            task_result.dataset_revision = f"local:{Path(data_dir) if data_dir else resources.data_dir()}"
        counter = wrapper.exit_counters.get(task_result.task_name, ExitStats())
        stats = counter.to_dict()
        by_role = {role: c.to_dict() for role, c in wrapper.role_counters.get(task_result.task_name, {}).items()}
        split_scores = task_result.scores
        for split in split_scores:
            for entry in split_scores[split]:
                entry["st_leap_expected_layers"] = stats["expected_layers"]
                entry["st_leap_exit_rate"] = stats["exit_rate"]
        first_split = next(iter(split_scores))
        summary["tasks"][task_result.task_name] = {
            "main_score": task_result.get_score(),
            "main_metric": mteb.get_task(task_result.task_name).metadata.main_score,
            "scores": {k: v for k, v in split_scores[first_split][0].items() if isinstance(v, (int, float))},
            "exit_stats": stats,
            "exit_stats_by_role": by_role,
        }
        if cache is not None:
            cache.save_to_cache(task_result, wrapper.mteb_model_meta, encode_kwargs=encode_kwargs)
    if output_folder is not None:
        experiment = wrapper.mteb_model_meta.experiment_name or "default"
        summary["output_folder"] = str(output_folder)
        write_json(summary, Path(output_folder) / f"st_leap_summary_{experiment}.json")
    return summary


def score_tasks(
    model: SentenceTransformer,
    tasks: Sequence[str],
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    backend: str = "mteb",
    source: str = "auto",
    output_folder: str | Path | None = None,
    name: str | None = None,
    batch_size: int = 32,
    **exit_settings: Any,
) -> dict[str, dict[str, Any]]:
    """Main score (x100), metric name and exit statistics of each task at one exit setting.

    ``backend="mteb"`` runs :func:`run_mteb` (mteb result files under ``output_folder``); ``backend="beir"`` scores
    the retrieval tasks with :func:`st_leap.evaluation.beir.evaluate_beir` on the local BEIR folders and STS-B with
    sentence-transformers' evaluator. ``tasks`` are short names of :data:`TASKS`. A query encoder for a kept index
    (a ``Router`` model) runs through mteb only, as saved (see :func:`run_mteb`); each task's
    ``exit_stats_by_role`` then says how many layers each route ran.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    if backend not in ("mteb", "beir"):
        raise ValueError(f"backend must be 'mteb' or 'beir', got {backend!r}")
    if backend == "beir" and router_of(model) is not None:
        raise ValueError(
            "a query encoder for a kept index (a Router model) is evaluated through mteb (backend 'mteb'), which "
            "sends queries to encode_query and documents to encode_document"
        )
    if backend == "mteb":
        summary = run_mteb(
            model,
            list(tasks),
            exit_threshold=exit_threshold,
            source=source,
            output_folder=output_folder,
            name=name,
            batch_size=batch_size,
            **exit_settings,
        )
        return {
            TASKS[t]: {
                "score": 100 * summary["tasks"][TASKS[t]]["main_score"],
                "metric": summary["tasks"][TASKS[t]]["main_metric"],
                "exit_stats": summary["tasks"][TASKS[t]]["exit_stats"],
                "exit_stats_by_role": summary["tasks"][TASKS[t]]["exit_stats_by_role"],
            }
            for t in tasks
        }
    scores: dict[str, dict[str, Any]] = {}
    for task in tasks:
        if task == "stsb":
            s1, s2, gold = resources.load_stsb("test")
            evaluator = EarlyExitEmbeddingSimilarityEvaluator(
                s1, s2, gold, exit_threshold=exit_threshold, batch_size=batch_size, name="stsb",
                show_progress_bar=True, **exit_settings,
            )
            metrics = evaluator(model)
            scores[TASKS[task]] = {
                "score": 100 * metrics["stsb_spearman_cosine"],
                "metric": "cosine_spearman",
                "exit_stats": evaluator.exit_stats,
            }
        else:
            res = evaluate_beir(
                model, resources.beir_dir(task), exit_threshold=exit_threshold, batch_size=batch_size, **exit_settings
            )
            scores[TASKS[task]] = {
                "score": 100 * res["ndcg"]["NDCG@10"],
                "metric": "ndcg_at_10",
                "ndcg": res["ndcg"],
                "exit_stats": res["exit_stats"]["all"],
            }
    return scores
