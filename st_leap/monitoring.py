"""Exit monitoring for serving (ours), after the paper's Appendix J step 5 and its "Responsible Deployment" advice:
watch the exit-layer distribution and the NN@10 overlap against a full-depth reference, alert when the mean exit
layer moves by more than one layer or the overlap drops by more than 20%, and fall back to full depth until the
traffic is back in band.

- :class:`RoleReference`: what one role's traffic is compared with: the exit-layer histogram (E[layers], exit
  rate) of the calibration texts at the served setting, and up to 1,000 of those texts with their full-depth
  embeddings. :func:`st_leap.calibrate` builds one per role and ``save_model=`` saves it beside the model
  (``st_leap_monitor/``); :func:`build_reference` builds one from any texts.
- :class:`ExitMonitor`: ``monitor.encode(texts, task="query")`` serves through :func:`st_leap.encode_with_exits`,
  keeps per-role rolling statistics, re-encodes a sampled fraction of the texts at full depth, raises alerts
  (callbacks, :mod:`logging`, Prometheus metrics with ``st-leap[monitoring]``) and falls back with hysteresis.

The monitor wraps ``encode``: the model, its layer loop and plain ``model.encode`` are not changed.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st_leap.exit_policy import ROLES, ExitStats, role_of
from st_leap.model import (
    EXIT_KEYS,
    ExitEncoding,
    early_exit_module,
    effective_exit_settings,
    encode_with_exits,
    router_of,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "FULL_DEPTH",
    "REFERENCE_DIR",
    "RoleReference",
    "MonitorEvent",
    "ExitMonitor",
    "build_reference",
    "save_references",
    "load_references",
    "neighbour_overlap",
]

logger = logging.getLogger(__name__)

#: The ``encode`` settings of full depth: what the monitor re-encodes with, and its default fallback.
FULL_DEPTH: dict[str, Any] = {"exit_threshold": None, "truncate_layers": None}
#: The folder, inside a saved model, that holds its monitoring references.
REFERENCE_DIR = "st_leap_monitor"
_SETTING_KEYS = (*EXIT_KEYS, "exit_maps")


def _numpy(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32)


def _unit(embeddings: Any) -> np.ndarray:
    x = _numpy(embeddings)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def _cosines(a: Any, b: Any) -> np.ndarray:
    return (_unit(a) * _unit(b)).sum(axis=1)


def neighbour_overlap(
    served: Any, full: Any, reference: np.ndarray, k: int, exclude: Sequence[int] | None = None
) -> np.ndarray:
    """NN@k overlap of each row against a full-depth reference set: the share of the ``k`` nearest reference rows
    (cosine) of its full-depth embedding that are also among the ``k`` nearest of its served embedding.

    Args:
        served: ``(m, D)`` embeddings as served.
        full: ``(m, D)`` full-depth embeddings of the same texts.
        reference: ``(n, D)`` unit-norm full-depth embeddings of the reference texts.
        k: Neighbours compared (at most ``n - 1``).
        exclude: Per row, the reference row to leave out (the same text), or -1.
    """
    s, f = _unit(served) @ reference.T, _unit(full) @ reference.T
    if exclude is not None:
        rows = np.flatnonzero(np.asarray(exclude) >= 0)
        cols = np.asarray(exclude)[rows]
        s[rows, cols] = -np.inf
        f[rows, cols] = -np.inf
    top_s = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top_f = np.argsort(-f, axis=1, kind="stable")[:, :k]
    return np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_s, top_f)], dtype=np.float64)


@dataclass
class RoleReference:
    """The calibrated state of one role that a monitor compares traffic with.

    Attributes:
        role: ``"query"``, ``"document"``, ``"default"`` or ``"all"`` (every role: calibrated with plain encode).
        counts: Exit-layer histogram over layers 1..L of ``texts`` at the served setting.
        texts: The reference texts (distinct).
        embeddings: ``(N, D)`` full-depth embeddings of ``texts``.
        nn_overlap: Mean NN@``nn_k`` overlap of ``texts`` at the served setting against the other reference texts
            (:func:`neighbour_overlap`, each text left out of its own neighbours).
        cosine: Mean cosine of each text's served embedding to its full-depth one.
        nn_k: k of the overlap.
        setting: The exit settings the histogram was measured with.
    """

    role: str
    counts: list[int]
    texts: list[str]
    embeddings: np.ndarray
    nn_overlap: float
    cosine: float
    nn_k: int = 10
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> ExitStats:
        return ExitStats(len(self.counts), list(self.counts))

    @property
    def num_layers(self) -> int:
        return len(self.counts)

    @property
    def expected_layers(self) -> float:
        return self.stats.expected_layers

    @property
    def exit_rate(self) -> float:
        return self.stats.exit_rate

    def to_dict(self) -> dict[str, Any]:
        """The summary (without texts and embeddings): what result files record."""
        return {
            "role": self.role,
            "num_layers": self.num_layers,
            "counts": list(self.counts),
            "expected_layers": self.expected_layers,
            "exit_rate": self.exit_rate,
            "nn_overlap": self.nn_overlap,
            "cosine": self.cosine,
            "nn_k": self.nn_k,
            "num_texts": len(self.texts),
            "setting": dict(self.setting),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``<role>.json`` (summary and texts) and ``<role>.npy`` (embeddings) into ``folder``."""
        from st_leap import reporting

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.role}.tmp.npy"
        np.save(tmp, np.asarray(self.embeddings, dtype=np.float32), allow_pickle=False)
        tmp.replace(folder / f"{self.role}.npy")
        return reporting.write_json({**self.to_dict(), "texts": list(self.texts)}, folder / f"{self.role}.json")

    @classmethod
    def load(cls, path: str | Path) -> RoleReference:
        """Read a reference written by :meth:`save` (``path``: its ``.json``)."""
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        embeddings = np.load(path.with_suffix(".npy"), allow_pickle=False)
        if embeddings.shape[0] != len(data["texts"]) or len(data["counts"]) < 1:
            raise ValueError(f"{path}: {len(data['texts'])} texts but {embeddings.shape[0]} embeddings")
        return cls(
            role=data["role"],
            counts=[int(c) for c in data["counts"]],
            texts=list(data["texts"]),
            embeddings=embeddings,
            nn_overlap=float(data["nn_overlap"]),
            cosine=float(data["cosine"]),
            nn_k=int(data["nn_k"]),
            setting=dict(data.get("setting") or {}),
        )


def build_reference(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    task: str | None = None,
    role: str | None = None,
    max_texts: int = 1000,
    nn_k: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    full_embeddings: Any = None,
    **encode_kwargs: Any,
) -> RoleReference:
    """Measure a :class:`RoleReference` on up to ``max_texts`` distinct ``texts`` (a seeded sample): their exit
    layers at the setting that is served (``encode_kwargs`` over the model's defaults, for ``task``), their
    full-depth embeddings, and the NN@``nn_k`` overlap and cosine of the served embeddings against them.

    Args:
        model: An st_leap model.
        texts: Texts like the role's traffic (the calibration data).
        task: ``"query"``, ``"document"`` or ``None`` (plain ``encode``).
        role: The key of the reference (default: the role of ``task``; ``"all"`` for every role).
        max_texts: Most texts kept.
        nn_k: k of the NN@k overlap.
        seed: Seed of the sample.
        batch_size: Encode batch size.
        full_embeddings: Full-depth embeddings of ``texts`` (row by row), when already computed.
        **encode_kwargs: Exit settings and other ``encode`` arguments of the served setting.

    Example:
        ::

            reference = st_leap.monitoring.build_reference(model, my_queries, task="query")
            reference.expected_layers, reference.nn_overlap
            st_leap.monitoring.save_references({"query": reference}, "my-model")
    """
    if isinstance(max_texts, bool) or not isinstance(max_texts, int) or max_texts < 2:
        raise ValueError(f"max_texts must be an int >= 2, got {max_texts!r}")
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    index = list(first.values())
    if len(index) > max_texts:
        index = sorted(random.Random(seed).sample(index, max_texts))
    if len(index) < 2:
        raise ValueError(f"a reference needs at least 2 distinct texts, got {len(index)}")
    chosen = [texts[i] for i in index]
    common = {"task": task, "batch_size": batch_size, "show_progress_bar": False}
    served = encode_with_exits(model, chosen, **common, **encode_kwargs)
    if full_embeddings is None:
        full = _numpy(encode_with_exits(model, chosen, **common, **{**encode_kwargs, **FULL_DEPTH}).embeddings)
    else:
        full = _numpy(full_embeddings)[index]
    k = min(nn_k, len(chosen) - 1)
    overlap = neighbour_overlap(served.embeddings, full, _unit(full), k, exclude=range(len(chosen)))
    setting = effective_exit_settings(model, encode_kwargs, task)
    if "exit_maps" in encode_kwargs:
        setting["exit_maps"] = encode_kwargs["exit_maps"]
    return RoleReference(
        role=role or role_of(task),
        counts=list(served.stats.counts),
        texts=chosen,
        embeddings=full,
        nn_overlap=float(overlap.mean()),
        cosine=float(_cosines(served.embeddings, full).mean()),
        nn_k=k,
        setting=setting,
    )


def save_references(references: Mapping[str, RoleReference], model_folder: str | Path) -> Path:
    """Save references beside a saved model, in ``<model_folder>/st_leap_monitor/`` (replacing what was there),
    so that ``ExitMonitor(st_leap.load(folder), reference=folder)`` finds them."""
    folder = Path(model_folder) / REFERENCE_DIR
    if folder.exists():
        shutil.rmtree(folder)
    for role, reference in references.items():
        if role != reference.role:
            raise ValueError(f"the reference saved as {role!r} is the reference of the {reference.role!r} role")
        reference.save(folder)
    return folder


def load_references(path: str | Path) -> dict[str, RoleReference]:
    """The references of a saved model folder (or of its ``st_leap_monitor/`` folder itself), by role."""
    path = Path(path)
    folder = path / REFERENCE_DIR if (path / REFERENCE_DIR).is_dir() else path
    found = {}
    for role in (*ROLES, "all"):
        if (folder / f"{role}.json").is_file():
            found[role] = RoleReference.load(folder / f"{role}.json")
    if not found:
        raise FileNotFoundError(
            f"no monitoring reference in {path}: save one with st_leap.calibrate(..., save_model=FOLDER) "
            "(st-leap calibrate --save-model) or with save_references(build_reference(...))"
        )
    return found


def _as_references(reference: Any) -> dict[str, RoleReference]:
    if reference is None:
        return {}
    if isinstance(reference, RoleReference):
        return {reference.role: reference}
    if isinstance(reference, str | Path):
        return load_references(reference)
    if isinstance(reference, Mapping) and "roles" in reference:  # an st_leap.calibrate result
        found = {role: entry.get("reference") for role, entry in reference["roles"].items()}
        missing = [role for role, ref in found.items() if not isinstance(ref, RoleReference)]
        if missing:
            raise ValueError(f"the calibration result has no monitoring reference for {missing} (reference_size=0?)")
        return found
    if isinstance(reference, Mapping) and all(isinstance(v, RoleReference) for v in reference.values()):
        return dict(reference)
    raise ValueError(
        "reference must be a RoleReference, a {role: RoleReference} mapping, an st_leap.calibrate result or the "
        f"folder of a saved model, got {type(reference).__name__}"
    )


@dataclass
class MonitorEvent:
    """An alert or a switch of a role's serving setting.

    Attributes:
        time: Unix time.
        role: The role.
        kind: ``"alert"`` (a signal left its band), ``"fallback"`` (the role now serves the fallback setting) or
            ``"recovered"`` (back to its own setting).
        signal: ``"mean_exit_layer"``, ``"nn_overlap"`` or ``"recovery"``.
        value: The window's value of the signal (for ``"recovery"``: the consecutive windows in band).
        threshold: The band it was held to: the largest shift in layers, the largest relative drop, or the
            windows needed.
        reference: The calibrated value.
        window: The role's window number.
        reason: The same, in words.
    """

    time: float
    role: str
    kind: str
    signal: str
    value: float
    threshold: float
    reference: float | None
    window: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Metrics:
    """The Prometheus metrics of a monitor, each with a ``role`` label."""

    def __init__(self, registry: Any, depth: int) -> None:
        try:
            from prometheus_client import Counter, Gauge, Histogram
        except ImportError as error:
            raise ImportError(
                "Prometheus metrics need prometheus_client: pip install 'st-leap[monitoring]'"
            ) from error
        kw: dict[str, Any] = {"labelnames": ["role"], "registry": registry}
        self.requests = Counter("st_leap_requests", "encode calls through the monitor", **kw)
        self.texts = Counter("st_leap_texts", "texts encoded through the monitor", **kw)
        self.samples = Counter("st_leap_samples", "texts re-encoded at full depth to check them", **kw)
        self.alerts = Counter("st_leap_alerts", "signals that left their band", **kw)
        self.fallbacks = Counter("st_leap_fallbacks", "switches to the fallback setting", **kw)
        self.mean_exit_layer = Gauge("st_leap_mean_exit_layer", "mean exit layer, rolling window", **kw)
        self.exit_rate = Gauge("st_leap_exit_rate", "share of texts stopping before the last layer, rolling", **kw)
        self.nn_overlap = Gauge("st_leap_nn_overlap", "NN@k overlap with full depth, rolling", **kw)
        self.cosine = Gauge("st_leap_cosine_to_full", "cosine of served to full-depth embeddings, rolling", **kw)
        self.fallback_active = Gauge("st_leap_fallback_active", "1 while the role serves the fallback setting", **kw)
        self.exit_layer = Histogram(
            "st_leap_exit_layer",
            "exit layer of each monitored text",
            buckets=[float(n) for n in range(1, depth + 1)],
            **kw,
        )

    def add_role(self, role: str) -> None:
        for metric in (self.requests, self.texts, self.samples, self.alerts, self.fallbacks, self.fallback_active):
            metric.labels(role=role)


class _RoleState:
    """One role's rolling window, current window, alert state and counters (guarded by the monitor's lock)."""

    def __init__(self, role: str, reference: RoleReference | None, window: int) -> None:
        self.role, self.reference = role, reference
        self.layers: deque[int] = deque(maxlen=window)
        self.nn: deque[float] = deque(maxlen=window)
        self.cosine: deque[float] = deque(maxlen=window)
        self.win_texts, self.win_layers, self.win_nn, self.win_cosine = 0, [], [], []
        self.alerting, self.good_windows, self.windows = False, 0, 0
        self.requests = self.texts = self.samples = self.alerts = self.fallbacks = 0
        if reference is not None:
            self.ref_unit = _unit(reference.embeddings)
            self.ref_index = {text: i for i, text in enumerate(reference.texts)}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class ExitMonitor:
    """Serve an st_leap model with exit monitoring, drift alerts and automatic fallback (ours, after the paper's
    Appendix J step 5).

    ``encode`` runs :func:`st_leap.encode_with_exits` and records, per role (``task``: ``"query"``,
    ``"document"``, else ``"default"``), each text's exit layer in a rolling window of ``window`` texts. Each text
    is re-encoded at full depth with probability ``sample_rate`` (a seeded RNG) to measure its cosine to full
    depth and its NN@k overlap against the reference texts (:func:`neighbour_overlap`). Every ``window`` texts of a
    role close a window, whose signals are checked against the role's :class:`RoleReference`:

    - the mean exit layer moved by more than ``max_layer_shift`` layers from the calibrated E[layers];
    - the mean NN@k overlap dropped by more than ``max_nn_drop`` (relative) below the calibrated overlap.

    A signal out of band is an alert: a :class:`MonitorEvent` passed to every callback and logged, after which the
    role serves ``fallback`` (full depth by default) until ``recover_windows`` consecutive windows are within the
    tighter bands ``recover_layer_shift`` and ``recover_nn_drop`` (hysteresis: no flapping). While it falls back,
    the signals come from the sampled texts, re-encoded at the role's own setting. A window without sampled texts
    has no overlap signal, and during fallback no layer signal either; it neither counts towards recovery nor
    resets it. Without a reference for a role (``reference`` covers roles by name, ``"all"`` covers every role) the
    role is only counted.

    Thread-safe: the encodes run outside the monitor's lock, each call's results are recorded under it.
    ``pool=`` and every other ``encode`` argument pass through to ``encode_with_exits`` (the full-depth checks use
    them too). With ``sample_rate=0`` and no alert, ``encode`` costs what ``encode_with_exits`` costs.

    Args:
        model: An st_leap model, served at its saved (calibrated) defaults or the ``encode`` kwargs.
        reference: A :class:`RoleReference`, a ``{role: RoleReference}`` mapping, an :func:`st_leap.calibrate`
            result, or the folder of a model saved by calibration (``st_leap_monitor/``). ``None``: counts only.
        window: Texts per window (per role).
        sample_rate: Share of texts re-encoded at full depth.
        seed: Seed of the sampling.
        max_layer_shift: Alert when the window's mean exit layer is further than this from the reference (layers).
        max_nn_drop: Alert when the window's NN@k overlap is below ``(1 - max_nn_drop)`` times the reference.
        recover_layer_shift: The band of the layer signal for recovery (at most ``max_layer_shift``).
        recover_nn_drop: The band of the overlap for recovery (at most ``max_nn_drop``).
        recover_windows: Consecutive windows in band needed to leave the fallback.
        fallback: ``"full"`` (full depth), the ``encode`` exit settings to serve instead (e.g.
            ``{"exit_threshold": 0.99}``), or ``None`` (alert only).
        on_event: A callback, or callbacks, called with each :class:`MonitorEvent` (outside the lock).
        registry: A ``prometheus_client.CollectorRegistry`` (e.g. ``prometheus_client.REGISTRY``) to export
            ``st_leap_*`` metrics to; ``None``: no metrics. Needs ``st-leap[monitoring]``.
        history: Window records and events kept (``None``: all).

    Example:
        ::

            import st_leap

            cal = st_leap.calibrate(model, {"texts": "queries.txt"}, 1.0, role="query", save_model="calibrated")
            model = st_leap.load("calibrated")
            monitor = st_leap.ExitMonitor(model, reference="calibrated", window=1000, sample_rate=0.01)
            monitor.subscribe(lambda event: print(event.reason))
            embeddings = monitor.encode(queries, task="query").embeddings
            monitor.snapshot()["roles"]["query"]["fallback_active"]
    """

    def __init__(
        self,
        model: SentenceTransformer,
        reference: Any = None,
        *,
        window: int = 1000,
        sample_rate: float = 0.01,
        seed: int = 0,
        max_layer_shift: float = 1.0,
        max_nn_drop: float = 0.2,
        recover_layer_shift: float = 0.5,
        recover_nn_drop: float = 0.1,
        recover_windows: int = 3,
        fallback: str | Mapping[str, Any] | None = "full",
        on_event: Callable[[MonitorEvent], Any] | Sequence[Callable[[MonitorEvent], Any]] | None = None,
        registry: Any = None,
        history: int | None = 1000,
    ) -> None:
        module = early_exit_module(model)
        if module is None and router_of(model) is not None:
            raise ValueError(
                "ExitMonitor watches one early-exit encoder, and this is a query encoder for a kept index (a Router: "
                "queries to a shallow encoder, documents to the index model): watch its query route, "
                "ExitMonitor(st_leap.backends.query_side(model), reference=...), and encode with task='query'"
            )
        if module is None:
            raise ValueError("ExitMonitor needs an st_leap model; load it with st_leap.from_pretrained(...)")
        depth = int(module.num_layers)
        for name, value in (("window", window), ("recover_windows", recover_windows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate!r}")
        if not 0 <= recover_layer_shift <= max_layer_shift:
            raise ValueError(
                f"need 0 <= recover_layer_shift <= max_layer_shift, got {recover_layer_shift}, {max_layer_shift}"
            )
        if not 0 <= recover_nn_drop <= max_nn_drop:
            raise ValueError(f"need 0 <= recover_nn_drop <= max_nn_drop, got {recover_nn_drop}, {max_nn_drop}")
        if fallback == "full":
            fallback = FULL_DEPTH
        if fallback is not None:
            fallback = dict(fallback)
            unknown = [key for key in fallback if key not in _SETTING_KEYS]
            if unknown:
                raise ValueError(f"fallback takes the settings {list(_SETTING_KEYS)}, got {unknown}")
            effective_exit_settings(model, fallback, None)  # a bad value fails here, not at the first alert
        self.model, self.num_layers = model, depth
        self.references = _as_references(reference)
        self.window, self.sample_rate, self.seed = window, float(sample_rate), seed
        self.max_layer_shift, self.max_nn_drop = float(max_layer_shift), float(max_nn_drop)
        self.recover_layer_shift, self.recover_nn_drop = float(recover_layer_shift), float(recover_nn_drop)
        self.recover_windows = recover_windows
        self.fallback: dict[str, Any] | None = fallback
        self._fallback_is_full = fallback is not None and all(fallback.get(k, 0) is None for k in FULL_DEPTH)
        self._callbacks = [on_event] if callable(on_event) else list(on_event or [])
        self._metrics = _Metrics(registry, depth) if registry is not None else None
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._roles: dict[str, _RoleState] = {}
        self._events: deque[MonitorEvent] = deque(maxlen=history)
        self._windows: deque[dict[str, Any]] = deque(maxlen=history)

    # ------------------------------------------------------------------------------------------------ public
    def subscribe(self, callback: Callable[[MonitorEvent], Any]) -> None:
        """Call ``callback(event)`` for every later :class:`MonitorEvent`."""
        with self._lock:
            self._callbacks.append(callback)

    def reference_for(self, task: str | None) -> RoleReference | None:
        """The reference the role of ``task`` is checked against (its own, else ``"all"``), or ``None``."""
        role = role_of(task)
        return self.references.get(role, self.references.get("all"))

    def fallback_active(self, task: str | None = None) -> bool:
        """Whether the role of ``task`` serves the fallback setting now."""
        with self._lock:
            state = self._roles.get(role_of(task))
            return bool(state and state.alerting and self.fallback is not None)

    @property
    def events(self) -> list[MonitorEvent]:
        """The alerts and switches so far (the last ``history``)."""
        with self._lock:
            return list(self._events)

    @property
    def windows(self) -> list[dict[str, Any]]:
        """One record per closed window (the last ``history``): role, texts, E[layers], exit rate, counts, NN@k
        overlap, cosine, the signals out of band, whether the role falls back after it."""
        with self._lock:
            return list(self._windows)

    def encode(self, inputs: Sequence[str] | str, *, task: str | None = None, **kwargs: Any) -> ExitEncoding:
        """Encode through :func:`st_leap.encode_with_exits` with the role's current setting (``kwargs`` over the
        model's defaults, or the fallback while the role falls back) and record the call.

        Args:
            inputs: Texts (or one text).
            task: ``"query"``, ``"document"`` or ``None`` (plain ``encode``).
            **kwargs: Every ``encode_with_exits`` argument (exit settings, ``batch_size``, ``pool``...).

        Returns:
            The :class:`~st_leap.ExitEncoding` of what was served.
        """
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        role = role_of(task)
        with self._lock:
            state = self._state(role)
            active = state.alerting and self.fallback is not None
            picks = [i for i in range(len(texts)) if self.sample_rate and self._rng.random() < self.sample_rate]
        kwargs.setdefault("show_progress_bar", False)
        result = encode_with_exits(self.model, texts, task=task, **({**kwargs, **self.fallback} if active else kwargs))
        probe = self._probe(state, texts, picks, result, task, kwargs, active) if picks else None
        with self._lock:
            events = self._record(state, result.exit_layers, picks, probe, active)
        for event in events:
            for callback in list(self._callbacks):
                try:
                    callback(event)
                except Exception:  # a failing subscriber must not break serving
                    logger.exception("st_leap monitor: an event callback failed")
        return result

    def snapshot(self) -> dict[str, Any]:
        """The monitor's state as a JSON-serializable dict: settings, per role the rolling statistics (exit-layer
        counts over 1..L, E[layers], exit rate, NN@k overlap, cosine), the reference's, the alert and fallback state
        and the counters, then the events and window records."""
        with self._lock:
            roles = {}
            for role, state in self._roles.items():
                stats = ExitStats.from_exit_layers(list(state.layers), self.num_layers)
                roles[role] = {
                    "rolling": {
                        "num_texts": stats.num_samples,
                        "counts": list(stats.counts),
                        "expected_layers": stats.expected_layers if stats.num_samples else None,
                        "exit_rate": stats.exit_rate if stats.num_samples else None,
                        "nn_overlap": _mean(state.nn),
                        "cosine": _mean(state.cosine),
                        "num_checked": len(state.nn) or len(state.cosine),
                    },
                    "reference": None if state.reference is None else state.reference.to_dict(),
                    "alert": state.alerting,
                    "fallback_active": state.alerting and self.fallback is not None,
                    "good_windows": state.good_windows,
                    "windows": state.windows,
                    "requests": state.requests,
                    "texts": state.texts,
                    "samples": state.samples,
                    "alerts": state.alerts,
                    "fallbacks": state.fallbacks,
                }
            return {
                "num_layers": self.num_layers,
                "settings": {
                    "window": self.window,
                    "sample_rate": self.sample_rate,
                    "seed": self.seed,
                    "max_layer_shift": self.max_layer_shift,
                    "max_nn_drop": self.max_nn_drop,
                    "recover_layer_shift": self.recover_layer_shift,
                    "recover_nn_drop": self.recover_nn_drop,
                    "recover_windows": self.recover_windows,
                    "fallback": None if self.fallback is None else dict(self.fallback),
                },
                "roles": roles,
                "events": [event.to_dict() for event in self._events],
                "windows": [dict(record) for record in self._windows],
            }

    # ----------------------------------------------------------------------------------------------- private
    def _state(self, role: str) -> _RoleState:
        state = self._roles.get(role)
        if state is None:
            reference = self.reference_for(role)
            if reference is not None and reference.num_layers != self.num_layers:
                raise ValueError(
                    f"the {reference.role!r} reference has {reference.num_layers} layers, the model {self.num_layers}"
                )
            state = self._roles[role] = _RoleState(role, reference, self.window)
            if self._metrics is not None:
                self._metrics.add_role(role)
        return state

    def _probe(
        self,
        state: _RoleState,
        texts: list[str],
        picks: list[int],
        result: ExitEncoding,
        task: str | None,
        kwargs: dict[str, Any],
        active: bool,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """For the sampled texts: the exit layers at the role's own setting (only while falling back: otherwise
        they were served), the NN@k overlap (with a reference) and the cosine to full depth."""
        sampled = [texts[i] for i in picks]
        served = _numpy(result.embeddings)[picks]
        full_kwargs = {**kwargs, **FULL_DEPTH}
        layers = None
        if active:  # served the fallback: measure what the role's own setting would have served
            own = encode_with_exits(self.model, sampled, task=task, **kwargs)
            layers, monitored = own.exit_layers, _numpy(own.embeddings)
            full = (
                served
                if self._fallback_is_full
                else _numpy(encode_with_exits(self.model, sampled, task=task, **full_kwargs).embeddings)
            )
        else:
            monitored = served
            full = _numpy(encode_with_exits(self.model, sampled, task=task, **full_kwargs).embeddings)
        overlap = None
        if state.reference is not None:
            k = min(state.reference.nn_k, len(state.reference.texts) - 1)
            exclude = [state.ref_index.get(text, -1) for text in sampled]
            overlap = neighbour_overlap(monitored, full, state.ref_unit, k, exclude=exclude)
        return layers, overlap, _cosines(monitored, full)

    def _record(
        self,
        state: _RoleState,
        exit_layers: np.ndarray,
        picks: list[int],
        probe: tuple[np.ndarray | None, np.ndarray | None, np.ndarray] | None,
        active: bool,
    ) -> list[MonitorEvent]:
        """Add one call's texts in order, closing a window every ``window`` texts (under the lock)."""
        state.requests += 1
        state.texts += len(exit_layers)
        state.samples += len(picks)
        own_layers, overlap, cosine = probe if probe is not None else (None, None, None)
        checked = {i: n for n, i in enumerate(picks)}
        events: list[MonitorEvent] = []
        monitored: list[int] = []
        for i, served_layer in enumerate(exit_layers.tolist()):
            n = checked.get(i)
            layer = served_layer if not active else (int(own_layers[n]) if n is not None else None)
            if layer is not None:
                state.layers.append(layer)
                state.win_layers.append(layer)
                monitored.append(layer)
            if n is not None:
                state.cosine.append(float(cosine[n]))
                state.win_cosine.append(float(cosine[n]))
                if overlap is not None:
                    state.nn.append(float(overlap[n]))
                    state.win_nn.append(float(overlap[n]))
            state.win_texts += 1
            if state.win_texts >= self.window:
                events += self._close(state)
        if self._metrics is not None:
            self._export(state, len(exit_layers), len(picks), monitored, events)
        return events

    def _close(self, state: _RoleState) -> list[MonitorEvent]:
        """Check a finished window against the reference, switch the role's setting if needed, start a new one."""
        depth, ref = self.num_layers, state.reference
        stats = ExitStats.from_exit_layers(state.win_layers, depth) if state.win_layers else None
        mean_layer = stats.expected_layers if stats else None
        nn, cosine = _mean(state.win_nn), _mean(state.win_cosine)
        now, number = time.time(), state.windows
        checks = []  # (signal, value, reference, alert threshold, out of the alert band, within the recovery band)
        if ref is not None and mean_layer is not None:
            shift = abs(mean_layer - ref.expected_layers)
            checks.append(
                (
                    "mean_exit_layer",
                    mean_layer,
                    ref.expected_layers,
                    self.max_layer_shift,
                    shift > self.max_layer_shift,
                    shift <= self.recover_layer_shift,
                )
            )
        if ref is not None and nn is not None:
            drop = (ref.nn_overlap - nn) / ref.nn_overlap if ref.nn_overlap > 0 else 0.0
            checks.append(
                (
                    "nn_overlap",
                    nn,
                    ref.nn_overlap,
                    self.max_nn_drop,
                    drop > self.max_nn_drop,
                    drop <= self.recover_nn_drop,
                )
            )
        bad = [c for c in checks if c[4]]
        events: list[MonitorEvent] = []
        if not state.alerting and bad:
            state.alerting, state.good_windows = True, 0
            for signal, value, reference, threshold, _, _ in bad:
                if signal == "mean_exit_layer":
                    reason = (
                        f"{state.role}: mean exit layer {value:.2f} is {abs(value - reference):.2f} layers from "
                        f"the calibrated {reference:.2f} (band {threshold:g})"
                    )
                else:
                    reason = (
                        f"{state.role}: NN@{ref.nn_k} overlap {value:.3f} is {100 * (reference - value) / reference:.0f}% "
                        f"below the calibrated {reference:.3f} (band {100 * threshold:g}%)"
                    )
                events.append(
                    MonitorEvent(now, state.role, "alert", signal, value, threshold, reference, number, reason)
                )
            state.alerts += len(bad)
            if self.fallback is not None:
                state.fallbacks += 1
                first = bad[0]
                events.append(
                    MonitorEvent(
                        now,
                        state.role,
                        "fallback",
                        first[0],
                        first[1],
                        first[3],
                        first[2],
                        number,
                        f"{state.role}: serving {self.fallback} until {self.recover_windows} consecutive windows are "
                        f"back within {self.recover_layer_shift:g} layers and {100 * self.recover_nn_drop:g}% overlap",
                    )
                )
        elif state.alerting:
            has_layers = any(c[0] == "mean_exit_layer" for c in checks)
            if checks and not all(c[5] for c in checks):
                state.good_windows = 0
            elif has_layers:
                state.good_windows += 1
            if state.good_windows >= self.recover_windows:
                state.alerting = False
                events.append(
                    MonitorEvent(
                        now,
                        state.role,
                        "recovered",
                        "recovery",
                        float(state.good_windows),
                        float(self.recover_windows),
                        None,
                        number,
                        f"{state.role}: {state.good_windows} consecutive windows back in band; serving the "
                        "role's own setting again",
                    )
                )
                state.good_windows = 0
        for event in events:
            log = logger.info if event.kind == "recovered" else logger.warning
            log("st_leap monitor: %s", event.reason)
        self._events.extend(events)
        self._windows.append(
            {
                "window": number,
                "role": state.role,
                "time": now,
                "num_texts": state.win_texts,
                "num_monitored": len(state.win_layers),
                "num_checked": len(state.win_cosine),
                "expected_layers": mean_layer,
                "exit_rate": stats.exit_rate if stats else None,
                "counts": list(stats.counts) if stats else [0] * depth,
                "nn_overlap": nn,
                "cosine": cosine,
                "alert": [c[0] for c in bad],
                "fallback": state.alerting and self.fallback is not None,
            }
        )
        state.windows += 1
        state.win_texts, state.win_layers, state.win_nn, state.win_cosine = 0, [], [], []
        return events

    def _export(
        self, state: _RoleState, num_texts: int, num_samples: int, layers: list[int], events: list[MonitorEvent]
    ) -> None:
        m, role = self._metrics, state.role
        m.requests.labels(role=role).inc()
        m.texts.labels(role=role).inc(num_texts)
        m.samples.labels(role=role).inc(num_samples)
        m.alerts.labels(role=role).inc(sum(e.kind == "alert" for e in events))
        m.fallbacks.labels(role=role).inc(sum(e.kind == "fallback" for e in events))
        histogram = m.exit_layer.labels(role=role)
        for layer in layers:
            histogram.observe(layer)
        if state.layers:
            stats = ExitStats.from_exit_layers(list(state.layers), self.num_layers)
            m.mean_exit_layer.labels(role=role).set(stats.expected_layers)
            m.exit_rate.labels(role=role).set(stats.exit_rate)
        if state.nn:
            m.nn_overlap.labels(role=role).set(float(np.mean(state.nn)))
        if state.cosine:
            m.cosine.labels(role=role).set(float(np.mean(state.cosine)))
        m.fallback_active.labels(role=role).set(1.0 if state.alerting and self.fallback is not None else 0.0)
