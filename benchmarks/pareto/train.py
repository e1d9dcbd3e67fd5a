"""The trained models of the equal-speed comparison (issue 14), on the same texts, teacher, steps and batches.

- ``leap``: st_leap's retrofit, exactly ``st-leap demo``'s (:func:`st_leap.cli.demo.demo_config`: LEAPLoss with the
  frozen all-MiniLM-L6-v2 as precomputed teacher, lr 3e-4, 10% warm-up, length-grouped batches of 32, max length 64);
- ``adaptive_layer``: the tool sentence-transformers users already have, ``AdaptiveLayerLoss`` wrapping ``MSELoss`` on
  the *same* teacher embeddings (the final embeddings of the same cache, read back, not recomputed), the same
  sentences in the same order, the same steps, batch size, learning rate, warm-up, scheduler and sampler. Our one
  choice: ``n_layers_per_step=-1`` (every prior layer each step, as LEAPLoss does; the default, 1, trains each of
  the 5 earlier layers on a fifth of the steps), other AdaptiveLayerLoss settings at their defaults.

Settings: ``benchmarks/pareto/defaults.json``. Models go to ``<output_root>/leap`` and
``<output_root>/adaptive_layer`` (gitignored ``runs/``); a model folder that exists is kept (``--force`` retrains).

    HF_HUB_OFFLINE=1 python -m benchmarks.pareto.train
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import command_line, meta_info, results_dir, write_result

HERE = Path(__file__).resolve().parent


def load_settings(path: str | Path = HERE / "defaults.json") -> dict:
    return json.loads(Path(path).read_text())


def leap_config(settings: dict):
    from st_leap import resources
    from st_leap.cli.demo import demo_config

    return demo_config(
        resources.resolve_model(settings["model"]),
        str(Path(settings["output_root"]) / "leap"),
        settings["max_steps"],
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        warmup_steps=settings["warmup_steps"],
        group_by_length=settings["group_by_length"],
        max_seq_length=settings["max_seq_length"],
        sentence_seed=settings["sentence_seed"],
        seed=settings["seed"],
        logging_steps=settings["logging_steps"],
    )


def train_leap(settings: dict) -> dict:
    from st_leap.training import train

    config = leap_config(settings)
    result = train(config)
    return {"output_dir": config.output_dir, "steps": result.steps, "train_seconds": result.train_seconds,
            "teacher_seconds": result.teacher_seconds, "teacher_cache": result.teacher_cache, "loss": result.loss_config}


def final_teacher_embeddings(cache_dir: str | Path, texts: list[str]) -> np.ndarray:
    """The teacher's final embeddings from the LEAP run's cache (row 0 of a layered cache), checked against the
    texts: the baseline must see the very same targets."""
    from st_leap.teacher import dataset_fingerprint

    cache_dir = Path(cache_dir)
    meta = json.loads((cache_dir / "meta.json").read_text())
    if meta["dataset"] != dataset_fingerprint(texts):
        raise ValueError(f"{cache_dir} was made from other texts than this run's")
    array = np.load(cache_dir / "embeddings.npy")
    return array[:, 0] if array.ndim == 3 else array


def train_adaptive_layer(settings: dict, teacher_cache: str | Path) -> dict:
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import AdaptiveLayerLoss, MSELoss

    from st_leap import resources
    from st_leap.reporting import save_model, write_json
    from st_leap.teacher import teacher_dataset
    from st_leap.training import training_arguments, training_texts

    config = leap_config(settings)  # the same texts (training_texts) and optimiser settings as the LEAP run
    texts = training_texts(config)
    labels = final_teacher_embeddings(teacher_cache, texts)
    out = Path(settings["output_root"]) / "adaptive_layer"
    torch.manual_seed(config.seed)
    model = SentenceTransformer(resources.resolve_model(settings["model"]))
    original_max_len = model.max_seq_length
    model.max_seq_length = config.max_seq_length
    loss = AdaptiveLayerLoss(model, MSELoss(model), **settings.get("adaptive_layer", {}))
    args = training_arguments(config, out / "checkpoints", save_strategy="no")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=teacher_dataset(texts, labels), loss=loss)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    model.max_seq_length = original_max_len
    save_model(model, out)
    info = {"output_dir": str(out), "steps": trainer.state.global_step, "train_seconds": seconds,
            "loss": {"AdaptiveLayerLoss": loss.get_config_dict()}, "teacher_cache": str(teacher_cache)}
    write_json({**info, "log_history": trainer.state.log_history}, out / "baseline_training.json")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "defaults.json"))
    parser.add_argument("--force", action="store_true", help="retrain models whose folder exists")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = load_settings(args.config)
    root = Path(settings["output_root"])
    runs = {}
    leap_dir = root / "leap"
    if args.force or not (leap_dir / "leap_training.json").exists():
        runs["leap"] = train_leap(settings)
    else:
        saved = json.loads((leap_dir / "leap_training.json").read_text())
        runs["leap"] = {"output_dir": str(leap_dir), "teacher_cache": saved["teacher_cache"], "reused": True}
    if args.force or not (root / "adaptive_layer" / "baseline_training.json").exists():
        runs["adaptive_layer"] = train_adaptive_layer(settings, runs["leap"]["teacher_cache"])
    else:
        runs["adaptive_layer"] = {"output_dir": str(root / "adaptive_layer"), "reused": True}
    command = command_line("benchmarks.pareto.train", argv)
    result = {"run_info": {"command": command, "settings": settings}, "runs": runs, "meta_info": meta_info(command)}
    write_result(results_dir("pareto") / "train", result)
    print(json.dumps(runs, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
