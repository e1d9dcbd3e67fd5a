"""Shared plumbing of the evaluation helpers: exit settings, exit statistics, model loading, run metadata."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata as _metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st_leap.exit_policy import ExitStats

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class _ModelDefault:
    """Sentinel: leave the setting out of ``encode`` so the model's saved default applies."""

    _instance: _ModelDefault | None = None

    def __new__(cls) -> _ModelDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MODEL_DEFAULT"

    def __reduce__(self) -> str:
        return "MODEL_DEFAULT"


MODEL_DEFAULT: Any = _ModelDefault()
"""Value of an exit setting meaning "do not pass it to ``encode``": the model's saved default is used."""

EXIT_KEYS = ("exit_threshold", "exit_patience", "exit_min_layer")
PACKAGES = ("st-leap", "sentence-transformers", "transformers", "torch", "mteb", "beir", "numpy", "scipy", "datasets")


def exit_kwargs(
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
) -> dict[str, Any]:
    """The exit settings to pass to ``encode``: every setting that is not :data:`MODEL_DEFAULT`.

    ``exit_threshold=None`` is kept (it means full depth); only ``MODEL_DEFAULT`` is dropped.
    """
    given = {"exit_threshold": exit_threshold, "exit_patience": exit_patience, "exit_min_layer": exit_min_layer}
    return {key: value for key, value in given.items() if value is not MODEL_DEFAULT}


def early_exit_module(model: SentenceTransformer) -> Any | None:
    """The model's first module if it keeps exit statistics (an st_leap ``EarlyExitTransformer``), else ``None``."""
    try:
        first = model[0]
    except (IndexError, TypeError, KeyError):
        return None
    return first if hasattr(first, "exit_stats") and hasattr(first, "num_layers") else None


def num_layers(model: SentenceTransformer) -> int | None:
    """Number of encoder layers of the model's first module (``None`` when it cannot be told)."""
    module = early_exit_module(model)
    if module is not None:
        return int(module.num_layers)
    try:
        config = model[0].auto_model.config
    except (AttributeError, IndexError, TypeError, KeyError):
        return None
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    return None


def effective_exit_settings(model: SentenceTransformer, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The exit settings an ``encode(**kwargs)`` call really runs with: the kwargs, else the module's defaults."""
    module = early_exit_module(model)
    if module is None:
        if kwargs.get("exit_threshold") is not None:
            raise ValueError(
                "exit_threshold was given but the model's first module is not an st_leap EarlyExitTransformer; "
                "load the model with st_leap.from_pretrained(...)"
            )
        return {"exit_threshold": None, "exit_patience": None, "exit_min_layer": None}
    return {key: kwargs.get(key, getattr(module, key)) for key in EXIT_KEYS}


class ExitCounter(ExitStats):
    """:class:`~st_leap.exit_policy.ExitStats` summed over several ``encode`` calls (``exit_stats`` only covers the
    last one). The depth may be left out: it is taken from the first counts added.

    Args:
        num_layers: depth L of the encoder; ``counts[l - 1]`` is the number of samples that stopped after layer l.
    """

    def __init__(self, num_layers: int | None = None) -> None:
        super().__init__(num_layers or 0)

    def reset(self) -> None:
        self.counts = [0] * self.num_layers

    def add_counts(self, counts: Sequence[int]) -> None:
        if not self.counts:
            self.num_layers = len(counts)
            self.counts = [0] * len(counts)
        if len(counts) != len(self.counts):
            raise ValueError(f"counts has {len(counts)} layers, expected {len(self.counts)}")
        for i, n in enumerate(counts):
            self.counts[i] += int(n)

    def add_exit_layers(self, exit_layers: Iterable[int]) -> None:
        if not self.num_layers:
            raise ValueError("num_layers is needed to count exit layers")
        binned = np.bincount(np.asarray(list(exit_layers), dtype=np.int64) - 1, minlength=self.num_layers)
        self.add_counts(binned.tolist())

    def add_from_model(self, model: SentenceTransformer, num_samples: int) -> None:
        """Add the last ``encode`` call's statistics; a model without early exit counts as full depth."""
        module = early_exit_module(model)
        if module is not None:
            self.add_counts(list(module.exit_stats.counts))
            return
        depth = self.num_layers or num_layers(model)
        if depth:
            if not self.counts:
                self.num_layers = depth
                self.counts = [0] * depth
            self.counts[-1] += num_samples


def load_model(model: str | SentenceTransformer, **kwargs: Any) -> SentenceTransformer:
    """An st_leap early-exit model from a path, Hub id or already loaded ``SentenceTransformer``.

    A model that already is an st_leap model is returned as is; a plain one is converted in place (its saved exit
    defaults, if any, are kept).
    """
    from sentence_transformers import SentenceTransformer

    from st_leap.model import as_early_exit, from_pretrained

    if isinstance(model, SentenceTransformer):
        return model if early_exit_module(model) is not None else as_early_exit(model)
    return from_pretrained(str(model), **kwargs)


def model_name(model: SentenceTransformer, fallback: str | None = None) -> str:
    """A readable name: the model card name, else the folder name of ``fallback``, else ``"unnamed"``."""
    if fallback:
        known = _known_local_models()
        resolved = str(Path(str(fallback)).resolve()) if Path(str(fallback)).exists() else None
        if resolved in known:
            return known[resolved]
    card = getattr(model, "model_card_data", None)
    name = getattr(card, "model_name", None) or getattr(card, "base_model", None)
    if name:
        return str(name)
    if fallback:
        path = Path(str(fallback))
        if path.exists():
            return path.name if path.name != "model" else path.parent.name
        return str(fallback)
    return "unnamed"


def _known_local_models() -> dict[str, str]:
    """Hub ids of the local copies in :mod:`st_leap.resources` (only those already unpacked)."""
    from st_leap import resources

    known = {}
    for getter, hub_id in (
        (resources.minilm_path, "sentence-transformers/all-MiniLM-L6-v2"),
        (resources.mpnet_path, "sentence-transformers/all-mpnet-base-v2"),
    ):
        try:
            known[str(Path(getter()).resolve())] = hub_id
        except (FileNotFoundError, OSError, StopIteration):
            continue
    return known


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_sha(path: str | Path | None = None) -> str | None:
    """The checkout's HEAD commit (``None`` outside git or before the first commit)."""
    cwd = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def run_info(command: str | Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """What every result JSON records: time, command, package versions, git sha, machine."""
    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = " ".join(str(c) for c in command)
    import torch

    info = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "git_sha": git_sha(),
        "package_versions": package_versions(),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "torch_num_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
    }
    info.update(extra)
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is MODEL_DEFAULT:
        return "model-default"
    return value


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def format_theta(theta: float | None) -> str:
    return "full" if theta is None else f"{theta:g}"
