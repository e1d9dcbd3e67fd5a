"""Config-driven LEAP training (used by ``st-leap train``, the recipe benchmark and ``st-leap demo``).

Training always runs through sentence-transformers' own machinery: ``SentenceTransformerTrainer`` (``api:
"trainer"``, works under ``torchrun``/accelerate) or the classic ``model.fit`` (``api: "fit"``, which builds the
same trainer). Measurement helpers report what the exit rule sees: per-layer cosine to the final layer, exit rate
and E[layers] at a threshold, and STS-B (sentence-transformers' ``EmbeddingSimilarityEvaluator``) at full depth,
with exits, and per layer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from st_leap import resources
from st_leap.diagnostics import layer_pooled_states
from st_leap.losses.leap import LEAPLoss

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one LEAP training run (the keys of a ``st-leap train --config`` file).

    ``model``/``teacher``: a local folder, a Hub id, or the shortcuts ``"minilm"`` (all-MiniLM-L6-v2) and
    ``"mpnet"`` (all-mpnet-base-v2) from :mod:`st_leap.resources`; ``teacher: null`` = self-distillation.
    ``teacher_mode``: ``"live"`` (frozen teacher run at every step) or ``"precomputed"`` (embeddings cached in
    ``cache_dir`` by :mod:`st_leap.teacher` and given to the loss as labels). ``loss``: keyword arguments of
    :class:`~st_leap.losses.LEAPLoss`. ``exit_threshold``/``exit_min_layer``: the exit defaults saved with the
    model. ``data``: ``"sentences"`` (:func:`~st_leap.resources.load_sentences`) or ``"passages"``
    (:func:`~st_leap.resources.load_passages`, ``sentences_per_passage`` consecutive sentences of news and
    reviews; train them at the serving length, e.g. ``max_seq_length: 256``); ``num_sentences`` is the number of
    training texts of either kind. ``group_by_length``: batches of similar-length texts
    (:class:`~st_leap.sampler.LengthGroupedBatchSampler`, less padding, faster steps; ``api: "trainer"`` only).
    """

    model: str = "minilm"
    teacher: str | None = "minilm"
    teacher_mode: str = "precomputed"
    output_dir: str = "runs/leap"
    num_sentences: int | None = None
    sentence_seed: int = 12345
    data: str = "sentences"
    sentences_per_passage: int = 8
    max_steps: int = 240
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_steps: int = 24
    scheduler: str = "linear"
    group_by_length: bool = False
    weight_decay: float = 0.01
    max_seq_length: int = 64
    api: str = "trainer"
    seed: int = 42
    logging_steps: int = 20
    loss: dict[str, Any] = field(default_factory=dict)
    loss_version: int = 2
    exit_threshold: float | None = 0.95
    exit_min_layer: int = 3
    cache_dir: str | None = None
    max_train_seconds: float | None = None
    save: bool = True

    def __post_init__(self) -> None:
        if self.loss_version not in (1, 2):
            raise ValueError(f"loss_version must be 1 (names before issue 12) or 2, got {self.loss_version!r}")
        if self.loss_version == 1:
            self.loss = migrate_loss_settings(self.loss, self.max_steps)
            self.loss_version = 2
        if self.teacher_mode not in ("live", "precomputed"):
            raise ValueError(f"teacher_mode must be 'live' or 'precomputed', got {self.teacher_mode!r}")
        if self.data not in ("sentences", "passages"):
            raise ValueError(f"data must be 'sentences' or 'passages', got {self.data!r}")
        if self.api not in ("trainer", "fit"):
            raise ValueError(f"api must be 'trainer' or 'fit', got {self.api!r}")
        if self.group_by_length and self.api != "trainer":
            raise ValueError("group_by_length needs api='trainer' (fit builds its own random batches)")
        for name in ("max_steps", "batch_size", "max_seq_length", "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a JSON or YAML file (unknown keys are an error)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_student(name: str) -> SentenceTransformer:
    """The student as an early-exit model (``st_leap.from_pretrained``), so it saves with its exit defaults."""
    from st_leap.model import from_pretrained

    return from_pretrained(resources.resolve_model(name))


# Loss keys of configs written before the paper's terms got the paper's names (st_leap 0.x, issue 12).
LEGACY_LOSS_KEYS = {"min_layer": "exit_min_layer", "late_weight": "anchor_weight", "late_layers": "anchor_layers",
                    "redundancy_weight": "adjacent_weight", "redundancy_layers": "adjacent_layers"}


def migrate_loss_settings(loss: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """Loss settings of a config file written before ``loss_version: 2`` in today's names.

    Old ``late_*`` / ``redundancy_*`` were st_leap's own terms; they are now ``anchor_*`` / ``adjacent_*``, and
    ``late`` / ``redundancy`` mean the paper's eqs. 8 / 9. ``student_weight_warmup_steps: N`` becomes
    ``student_weight_ramp: [0, N / max_steps]`` (the same linear ramp).
    """
    if loss.get("preset", "default") != "default":
        raise ValueError(
            "loss_version 1 preset='paper' was not the paper's loss (weights 1.0, no late/redundancy terms) and is "
            "gone: use loss_version 2 with preset 'paper' (Table 14) or list the old weights explicitly"
        )
    out = {LEGACY_LOSS_KEYS.get(k, k): v for k, v in loss.items() if k != "preset"}
    # The version-1 defaults that differ from today's (final 1.0 and the adjacent pull 1.0).
    out.setdefault("final_weight", 1.0)
    out.setdefault("adjacent_weight", 1.0)
    steps = out.pop("student_weight_warmup_steps", 0)
    if steps:
        out["student_weight_ramp"] = [0.0, min(1.0, steps / max_steps)]
    return out


def build_loss(model: SentenceTransformer, config: TrainConfig, teacher: SentenceTransformer | None) -> LEAPLoss:
    loss_kwargs = dict(config.loss)
    loss_kwargs.setdefault("exit_min_layer", config.exit_min_layer)
    loss_kwargs.setdefault("total_steps", config.max_steps)
    if config.teacher_mode == "precomputed" and teacher is not None:
        loss_kwargs.setdefault("num_teacher_layers", int(teacher[0].auto_model.config.num_hidden_layers))
        loss_kwargs.setdefault("teacher_dim", int(teacher.get_embedding_dimension()))
        return LEAPLoss(model, teacher=None, **loss_kwargs)
    return LEAPLoss(model, teacher=teacher, **loss_kwargs)


def train(config: TrainConfig | dict[str, Any], sentences: Sequence[str] | None = None) -> SentenceTransformer:
    """Run one LEAP training from a config; returns the trained model (saved to ``output_dir`` if ``save``)."""
    from datasets import Dataset

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    torch.manual_seed(config.seed)
    model = load_student(config.model)
    original_max_len = model.max_seq_length
    model.max_seq_length = config.max_seq_length
    teacher = None
    if config.teacher is not None:
        teacher = SentenceTransformer(resources.resolve_model(config.teacher), device=str(model.device))
        teacher.max_seq_length = config.max_seq_length
    if sentences is None:
        n = config.num_sentences or config.max_steps * config.batch_size
        if config.data == "passages":
            sentences = resources.load_passages(
                n, seed=config.sentence_seed, sentences_per_passage=config.sentences_per_passage
            )
        else:
            sentences = resources.load_sentences(n, seed=config.sentence_seed)
    sentences = list(sentences)
    loss = build_loss(model, config, teacher)

    if config.teacher_mode == "precomputed" and teacher is not None:
        from st_leap.teacher import compute_teacher_embeddings, teacher_dataset

        cache = config.cache_dir or str(Path(config.output_dir) / "teacher_cache")
        layers = loss.teacher_layers() if loss.settings.intermediate_weight > 0 else None
        teacher_start = time.perf_counter()
        embeddings = compute_teacher_embeddings(teacher, sentences, cache, layers=layers)
        teacher_seconds = time.perf_counter() - teacher_start
        dataset = teacher_dataset(sentences, embeddings)
        teacher = None  # not needed any more: free it
    else:
        dataset = Dataset.from_dict({"sentence": sentences})
        teacher_seconds = 0.0

    start = time.perf_counter()
    if config.api == "fit":
        from sentence_transformers.sentence_transformer.readers import InputExample
        from torch.utils.data import DataLoader

        if "label" in dataset.column_names:
            examples = [InputExample(texts=[s], label=e) for s, e in zip(dataset["sentence"], embeddings, strict=True)]
        else:
            examples = [InputExample(texts=[s]) for s in sentences]
        loader = DataLoader(examples, shuffle=True, batch_size=config.batch_size, drop_last=True)
        steps_per_epoch = len(loader)
        epochs = max(1, -(-config.max_steps // max(1, steps_per_epoch)))
        model.fit(
            train_objectives=[(loader, loss)],
            epochs=epochs,
            steps_per_epoch=min(config.max_steps, steps_per_epoch),
            warmup_steps=config.warmup_steps,
            scheduler="warmup" + config.scheduler if config.scheduler != "constant" else "constantlr",
            optimizer_params={"lr": config.learning_rate},
            weight_decay=config.weight_decay,
            show_progress_bar=True,
        )
    else:
        from sentence_transformers import SentenceTransformerTrainer
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

        from st_leap.sampler import LengthGroupedBatchSampler

        args = SentenceTransformerTrainingArguments(
            output_dir=config.output_dir,
            max_steps=config.max_steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_steps,
            lr_scheduler_type=config.scheduler,
            weight_decay=config.weight_decay,
            logging_steps=config.logging_steps,
            save_strategy="no",
            report_to="none",
            seed=config.seed,
            dataloader_drop_last=True,
            batch_sampler=LengthGroupedBatchSampler if config.group_by_length else BatchSamplers.BATCH_SAMPLER,
        )
        callbacks = [_TimeBudget(config.max_train_seconds)] if config.max_train_seconds else None
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss, callbacks=callbacks
        )
        trainer.train()
        model.leap_steps = trainer.state.global_step  # type: ignore[attr-defined]
        model.leap_log_history = trainer.state.log_history  # type: ignore[attr-defined]
    train_seconds = time.perf_counter() - start
    model.eval()
    model.max_seq_length = original_max_len
    first = model[0]
    if hasattr(first, "exit_threshold"):
        first.exit_threshold = config.exit_threshold
        first.exit_min_layer = config.exit_min_layer
    model.leap_train_seconds = train_seconds  # type: ignore[attr-defined]
    model.leap_teacher_seconds = teacher_seconds  # type: ignore[attr-defined]
    if config.save:
        model.save(config.output_dir)
        (Path(config.output_dir) / "leap_training.json").write_text(
            json.dumps(
                {
                    "config": config.to_dict(),
                    "loss": loss.get_config_dict(),
                    "train_seconds": train_seconds,
                    "teacher_seconds": teacher_seconds,
                    "steps": getattr(model, "leap_steps", None),
                    "log_history": getattr(model, "leap_log_history", None),
                },
                indent=2,
            )
        )
    return model


def _TimeBudget(seconds: float):  # noqa: N802 - a callback factory, named like the class it returns
    """A TrainerCallback that stops training after ``seconds`` of wall-clock time (checked after each step)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.start > seconds:
                logger.warning("Time budget of %.0f s reached at step %d: stopping", seconds, state.global_step)
                control.should_training_stop = True
            return control

    return TimeBudget()


# ------------------------------------------------------------------------------------------------ measurement
def layer_similarity(model: SentenceTransformer, sentences: Sequence[str], batch_size: int = 64) -> dict[str, list]:
    """Mean cosine of each layer's masked-mean state to the final layer's, and to the previous layer's.

    ``to_final[l-1]`` and ``adjacent[l-1]`` for layers ``l = 1..L`` (``adjacent[0]`` compares with the embedding
    output), from :func:`st_leap.diagnostics.layer_pooled_states` (one full-depth pass).
    """
    return _similarity_from_pooled(
        layer_pooled_states(model, list(sentences), batch_size=batch_size, show_progress_bar=False)
    )


def _similarity_from_pooled(pooled: torch.Tensor) -> dict[str, list]:
    """``to_final`` / ``adjacent`` mean cosines of ``(N, L + 1, H)`` pooled states, for layers ``1..L``."""
    final = pooled[:, -1]
    layers = range(1, pooled.shape[1])
    return {
        "to_final": [F.cosine_similarity(pooled[:, layer], final, dim=-1).mean().item() for layer in layers],
        "adjacent": [F.cosine_similarity(pooled[:, layer], pooled[:, layer - 1], dim=-1).mean().item() for layer in layers],
    }


def stsb_spearman(model: SentenceTransformer, split: str = "test", **exit_settings: Any) -> float:
    """Cosine Spearman on STS-B, encoding with ``exit_settings`` (e.g. ``exit_threshold=0.95, exit_min_layer=3``)."""
    from st_leap.evaluation import EarlyExitEmbeddingSimilarityEvaluator

    s1, s2, scores = resources.load_stsb(split)
    evaluator = EarlyExitEmbeddingSimilarityEvaluator(
        s1, s2, scores, main_similarity="cosine", name=f"stsb-{split}", batch_size=64, **exit_settings
    )
    return float(evaluator(model)[evaluator.primary_metric])


def layer_stsb(model: SentenceTransformer, layer: int, split: str = "test") -> float:
    """STS-B Spearman of the embedding computed from layer ``layer`` (the model truncated to its first layers)."""
    first = model[0]
    encoder = first.auto_model.encoder if hasattr(first.auto_model, "encoder") else first.auto_model.transformer
    attr = "layer" if hasattr(encoder, "layer") else "layers"
    full = getattr(encoder, attr)
    setattr(encoder, attr, full[:layer])
    try:
        kwargs = {"exit_threshold": None} if hasattr(first, "exit_threshold") else {}
        return stsb_spearman(model, split, **kwargs)
    finally:
        setattr(encoder, attr, full)


def measure(
    model: SentenceTransformer,
    thresholds: Sequence[float] = (0.90, 0.93, 0.95, 0.97),
    min_layer: int = 3,
    per_layer_stsb: bool = True,
    split: str = "test",
    method: str = "encode",
) -> dict[str, Any]:
    """Everything the recipe reports, on the STS-B ``split`` sentences.

    Returns per-layer similarity to final / adjacent, per-layer STS-B (optional), full-depth STS-B, and for each
    threshold: exit rate, E[layers], exit-layer counts (``model[0].exit_stats``) and the exited STS-B.

    ``method="encode"`` encodes once per threshold through the early-exit module (what a user runs);
    ``method="replay"`` runs one full-depth pass and replays the one exit rule on the pooled states of every
    layer (:func:`st_leap.exit_policy.exit_layers_from_pooled`): the same decisions and embeddings for a
    Transformer -> mean Pooling [-> Normalize] model, at a fraction of the cost (used between training probes).
    """
    from st_leap.model import as_early_exit

    if method not in ("encode", "replay"):
        raise ValueError(f"method must be 'encode' or 'replay', got {method!r}")
    as_early_exit(model)
    if method == "replay":
        return _measure_replay(model, thresholds, min_layer, per_layer_stsb, split)
    first = model[0]
    sentences = resources.stsb_sentences(split)
    result: dict[str, Any] = {"num_sentences": len(sentences), "num_layers": first.num_layers}
    result.update(layer_similarity(model, sentences))
    result["stsb_full"] = stsb_spearman(model, split, exit_threshold=None)
    if per_layer_stsb:
        result["stsb_per_layer"] = [layer_stsb(model, layer, split) for layer in range(1, first.num_layers)] + [
            result["stsb_full"]
        ]
    result["exits"] = {}
    for theta in thresholds:
        model.encode(sentences, batch_size=64, exit_threshold=theta, exit_min_layer=min_layer, output_value=None)
        stats = first.exit_stats
        result["exits"][str(theta)] = {
            "exit_rate": stats.exit_rate,
            "expected_layers": stats.expected_layers,
            "counts": list(stats.counts),
            "stsb_exited": stsb_spearman(model, split, exit_threshold=theta, exit_min_layer=min_layer),
        }
    return result


def _measure_replay(
    model: SentenceTransformer, thresholds: Sequence[float], min_layer: int, per_layer_stsb: bool, split: str
) -> dict[str, Any]:
    from st_leap.evaluation.sweep import replay_exits, replay_pooled_states
    from st_leap.evaluation.sweep import stsb_spearman as stsb_from_embeddings
    from st_leap.exit_policy import ExitStats

    s1, s2, gold = resources.load_stsb(split)
    sentences = resources.stsb_sentences(split)
    index = {s: i for i, s in enumerate(sentences)}
    pooled = replay_pooled_states(model, sentences, batch_size=64, show_progress_bar=False)
    num_layers = pooled.shape[1] - 1
    result: dict[str, Any] = {"num_sentences": len(sentences), "num_layers": num_layers, "method": "replay"}
    result.update(_similarity_from_pooled(pooled))

    def score(embeddings: torch.Tensor) -> float:
        return stsb_from_embeddings(embeddings.numpy(), index, s1, s2, gold) / 100.0

    result["stsb_full"] = score(pooled[:, -1])
    if per_layer_stsb:
        result["stsb_per_layer"] = [score(pooled[:, layer]) for layer in range(1, num_layers + 1)]
    result["exits"] = {}
    rows = torch.arange(len(sentences))
    for theta in thresholds:
        exit_layer = torch.from_numpy(replay_exits(pooled, theta, model[0].exit_patience, min_layer))
        stats = ExitStats(num_layers)
        stats.update(exit_layer)
        result["exits"][str(theta)] = {
            "exit_rate": stats.exit_rate,
            "expected_layers": stats.expected_layers,
            "counts": list(stats.counts),
            "stsb_exited": score(pooled[rows, exit_layer]),
        }
    return result


def mean_cos_to_final(measurement: dict[str, Any], layers: Sequence[int] = (3, 4, 5)) -> float:
    """Mean of ``to_final`` over the given 1-based layers."""
    return sum(measurement["to_final"][layer - 1] for layer in layers) / len(layers)


def demo_retrofit(
    model_path: str | None = None,
    output_dir: str = "runs/leap-demo",
    max_steps: int = 600,
    **overrides: Any,
) -> SentenceTransformer:
    """A bounded LEAP retrofit for ``st-leap demo`` (the whole demo, this step included, took 10 min 11 s on 2 CPU
    cores: ``benchmarks/results/demo_run.json``).

    Self-distils ``model_path`` (default all-MiniLM-L6-v2) with the frozen original as precomputed teacher for
    ``max_steps`` steps of batch 32 (lr 3e-4, 10% warm-up, length-grouped batches), saves it to ``output_dir`` with exit defaults
    theta=0.95, l_min=3, and returns it (an early-exit model). The loss is LEAPLoss with the settings of the best
    300-step probe (``benchmarks/results/train_recipe_probes.md``, ``p_sw0_final4_red6_lr3e-4``): the teacher as
    the only target, with the recipe's ``final_weight=4`` (full depth stays at the original's STS-B) and
    ``adjacent_weight=6``.
    ``overrides`` are :class:`TrainConfig` fields (``loss`` replaces the loss settings).
    """
    path = model_path or "minilm"
    settings: dict[str, Any] = {
        "learning_rate": 3e-4,
        "loss": {"student_weight": 0.0},
        "warmup_steps": max(1, max_steps // 10),
        "group_by_length": True,
    }
    settings.update(overrides)
    config = TrainConfig(
        model=path,
        teacher=path,
        teacher_mode="precomputed",
        output_dir=output_dir,
        max_steps=max_steps,
        **settings,
    )
    return train(config)


def main_train(config_path: str, output_dir: str | None = None, measure_after: bool = False) -> dict[str, Any]:
    """What ``st-leap train --config FILE`` does; returns a summary dict."""
    config = TrainConfig.from_file(config_path)
    if output_dir is not None:
        config.output_dir = output_dir
    os.makedirs(config.output_dir, exist_ok=True)
    model = train(config)
    summary: dict[str, Any] = {"output_dir": config.output_dir, "train_seconds": model.leap_train_seconds}
    if measure_after:
        summary["metrics"] = measure(
            model, thresholds=(config.exit_threshold or 0.95,), min_layer=config.exit_min_layer, per_layer_stsb=False
        )
    return summary
