"""Config-driven LEAP training (used by ``st-leap train``, ``st-leap demo`` and the training benchmarks).

:class:`TrainConfig` holds the settings of one run, :func:`train` runs it and returns a :class:`TrainResult`.
Training always goes through sentence-transformers' own machinery: ``SentenceTransformerTrainer`` (``api:
"trainer"``, works under ``torchrun``/accelerate) or the classic ``model.fit`` (``api: "fit"``, which builds the
same trainer). Measuring a trained model is :func:`st_leap.evaluation.sweep.measure`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
from transformers import TrainerCallback

from st_leap import resources
from st_leap.losses.leap import LEAPLoss
from st_leap.model import as_early_exit, from_pretrained
from st_leap.reporting import write_json
from st_leap.sampler import LengthGroupedBatchSampler
from st_leap.teacher import compute_teacher_embeddings, teacher_dataset

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
            try:
                import yaml
            except ImportError as error:
                raise ImportError(f"{path} is YAML: pip install 'st-leap[yaml]' (or write the config as JSON)") from error

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


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (an early-exit model with the config's exit defaults) and
    how the run went."""

    model: SentenceTransformer
    steps: int | None
    train_seconds: float
    teacher_seconds: float
    log_history: list[dict[str, Any]] | None
    loss_config: dict[str, Any]

    def to_dict(self, config: TrainConfig) -> dict[str, Any]:
        """The ``leap_training.json`` record: config, loss settings, timing, steps and the Trainer's log."""
        return {
            "config": config.to_dict(),
            "loss": self.loss_config,
            "train_seconds": self.train_seconds,
            "teacher_seconds": self.teacher_seconds,
            "steps": self.steps,
            "log_history": self.log_history,
        }


def load_student(name: str) -> SentenceTransformer:
    """The student as an early-exit model (``st_leap.from_pretrained``), so it saves with its exit defaults."""
    return from_pretrained(resources.resolve_model(name))


def training_texts(config: TrainConfig) -> list[str]:
    """The config's training texts: shuffled sentences or passages of the shared data."""
    n = config.num_sentences or config.max_steps * config.batch_size
    if config.data == "passages":
        return resources.load_passages(n, seed=config.sentence_seed, sentences_per_passage=config.sentences_per_passage)
    return resources.load_sentences(n, seed=config.sentence_seed)


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


def train(config: TrainConfig | dict[str, Any], sentences: Sequence[str] | None = None) -> TrainResult:
    """Run one LEAP training from a config; the model is saved to ``output_dir`` (with ``leap_training.json``)
    if ``config.save``."""
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
    sentences = list(sentences) if sentences is not None else training_texts(config)
    loss = build_loss(model, config, teacher)

    teacher_seconds = 0.0
    embeddings = None
    if config.teacher_mode == "precomputed" and teacher is not None:
        cache = config.cache_dir or str(Path(config.output_dir) / "teacher_cache")
        layers = loss.teacher_layers() if loss.settings.intermediate_weight > 0 else None
        start = time.perf_counter()
        embeddings = compute_teacher_embeddings(teacher, sentences, cache, layers=layers)
        teacher_seconds = time.perf_counter() - start
        dataset = teacher_dataset(sentences, embeddings)
        teacher = None  # not needed any more: free it
    else:
        dataset = Dataset.from_dict({"sentence": sentences})

    start = time.perf_counter()
    if config.api == "fit":
        steps, log_history = _train_with_fit(model, loss, sentences, embeddings, config), None
    else:
        steps, log_history = _train_with_trainer(model, loss, dataset, config)
    train_seconds = time.perf_counter() - start
    model.eval()
    model.max_seq_length = original_max_len
    as_early_exit(model, exit_threshold=config.exit_threshold, exit_min_layer=config.exit_min_layer)
    result = TrainResult(model, steps, train_seconds, teacher_seconds, log_history, loss.get_config_dict())
    if config.save:
        model.save(config.output_dir)
        write_json(result.to_dict(config), Path(config.output_dir) / "leap_training.json")
    return result


def _train_with_trainer(
    model: SentenceTransformer, loss: LEAPLoss, dataset: Dataset, config: TrainConfig
) -> tuple[int, list[dict[str, Any]]]:
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
    callbacks = [TimeBudget(config.max_train_seconds)] if config.max_train_seconds else None
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=callbacks)
    trainer.train()
    return trainer.state.global_step, trainer.state.log_history


def _train_with_fit(
    model: SentenceTransformer, loss: LEAPLoss, sentences: list[str], labels: Any, config: TrainConfig
) -> int:
    from sentence_transformers.sentence_transformer.readers import InputExample
    from torch.utils.data import DataLoader

    examples = [
        InputExample(texts=[s]) if labels is None else InputExample(texts=[s], label=labels[i])
        for i, s in enumerate(sentences)
    ]
    loader = DataLoader(examples, shuffle=True, batch_size=config.batch_size, drop_last=True)
    steps_per_epoch = min(config.max_steps, len(loader))
    epochs = max(1, -(-config.max_steps // max(1, len(loader))))
    model.fit(
        train_objectives=[(loader, loss)],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=config.warmup_steps,
        scheduler="warmup" + config.scheduler if config.scheduler != "constant" else "constantlr",
        optimizer_params={"lr": config.learning_rate},
        weight_decay=config.weight_decay,
        show_progress_bar=True,
    )
    return steps_per_epoch * epochs


class TimeBudget(TrainerCallback):
    """Stops training after ``seconds`` of wall-clock time (checked after each step)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            logger.warning("Time budget of %.0f s reached at step %d: stopping", self.seconds, state.global_step)
            control.should_training_stop = True
        return control
