"""The exit rule (paper Algorithm 1) and its bookkeeping, as pure functions. No model, no I/O.

After layer ``l`` a sample exits when ``l >= l_min`` and ``l > k`` and ``cos(p_l, p_{l-k}) >= theta``, where ``p_l`` is
the attention-masked mean of the hidden states of layer ``l`` (layer 0 is the embedding output). Everything that
decides *whether* a sample stops lives here; *how* the layers are stepped lives in :mod:`st_leap.modules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch
from torch import Tensor


def validate_exit_args(
    threshold: float | None, patience: int, min_layer: int, num_layers: int
) -> tuple[float | None, int, int]:
    """Check the three exit settings and return them normalised, or raise a ``ValueError`` naming the bad one.

    Args:
        threshold: theta, a number in (0, 1], or None for full depth.
        patience: k, the layer distance of the convergence check, an int in [1, num_layers - 1].
        min_layer: l_min, the first layer at which a sample may exit, an int in [1, num_layers].
        num_layers: L, the depth of the encoder.
    """
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, Real) or math.isnan(threshold):
            raise ValueError(f"exit_threshold must be a number in (0, 1] or None, got {threshold!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"exit_threshold must be in (0, 1] (or None for full depth), got {threshold!r}")
        threshold = float(threshold)
    if isinstance(patience, bool) or not isinstance(patience, Integral):
        raise ValueError(f"exit_patience must be an int in [1, {num_layers - 1}], got {patience!r}")
    if not 1 <= patience <= max(1, num_layers - 1):
        raise ValueError(f"exit_patience must be in [1, {max(1, num_layers - 1)}] for a {num_layers}-layer model, got {patience!r}")
    if isinstance(min_layer, bool) or not isinstance(min_layer, Integral):
        raise ValueError(f"exit_min_layer must be an int in [1, {num_layers}], got {min_layer!r}")
    if not 1 <= min_layer <= num_layers:
        raise ValueError(f"exit_min_layer must be in [1, {num_layers}] for a {num_layers}-layer model, got {min_layer!r}")
    return threshold, int(patience), int(min_layer)


#: The paper's theta grid (Tables 2, 5): the default of diagnose, sweeps, calibration and measurements.
PAPER_THRESHOLDS = (0.90, 0.92, 0.93, 0.95, 0.97, 0.99)


def validate_truncate_layers(truncate_layers: int | None, num_layers: int) -> int | None:
    """Check a static depth: ``None`` (the whole encoder) or an int in [1, num_layers]; raise a ``ValueError``
    naming it otherwise."""
    if truncate_layers is None:
        return None
    if isinstance(truncate_layers, bool) or not isinstance(truncate_layers, Integral):
        raise ValueError(f"truncate_layers must be an int in [1, {num_layers}] or None, got {truncate_layers!r}")
    if not 1 <= truncate_layers <= num_layers:
        raise ValueError(
            f"truncate_layers must be in [1, {num_layers}] for a {num_layers}-layer model, got {truncate_layers!r}"
        )
    return int(truncate_layers)


#: The roles an exit setting can be given per role: sentence-transformers' ``task`` of ``encode_query``
#: (``"query"``) and ``encode_document`` (``"document"``), and ``"default"`` for every other call (plain ``encode``).
ROLES = ("query", "document", "default")
#: The sentence-transformers ``task`` of each role: ``encode_query``, ``encode_document``, plain ``encode``.
ROLE_TASKS = {"query": "query", "document": "document", "default": None}


def role_of(task: str | None) -> str:
    """The exit role of a sentence-transformers ``task``: ``"query"``, ``"document"``, else ``"default"``."""
    return task if task in ("query", "document") else "default"


def per_role(name: str, value: object, fallback: object) -> object:
    """A setting given as one value is returned as is; a mapping from role to value is checked (only the keys of
    :data:`ROLES`) and completed: a missing ``"query"`` / ``"document"`` takes the ``"default"`` entry, a missing
    ``"default"`` takes ``fallback`` (the module's own default)."""
    if not isinstance(value, Mapping):
        return value
    unknown = [key for key in value if key not in ROLES]
    if unknown or not value:
        raise ValueError(
            f"{name} given per role must map some of {list(ROLES)} to values, got keys {sorted(map(str, value))}"
        )
    default = value.get("default", fallback)
    return {role: value.get(role, default) for role in ROLES}


def for_role(value: object, role: str) -> object:
    """The value of a setting for one role (a single value applies to every role)."""
    return value[role] if isinstance(value, Mapping) else value


def with_role(value: object, role: str, new: object) -> object:
    """``value`` with its entry for ``role`` set to ``new`` (``role="all"`` replaces it): the other roles keep
    what ``value`` gave them."""
    if role == "all":
        return new
    if role not in ROLES:
        raise ValueError(f"role must be 'all' or one of {list(ROLES)}, got {role!r}")
    mapping = dict(value) if isinstance(value, Mapping) else dict.fromkeys(ROLES, value)
    mapping[role] = new
    return mapping


def resolve_exit_settings(
    threshold: object, patience: object, min_layer: object, truncate_layers: object, num_layers: int, role: str
) -> tuple[float | None, int, int, int | None]:
    """The validated ``(theta, k, l_min, depth)`` one call runs with, for ``role``; each setting may be one value or
    a per-role mapping (see :func:`per_role`). ``l_min=None`` means :func:`default_min_layer`."""
    threshold = for_role(per_role("exit_threshold", threshold, None), role)
    patience = for_role(per_role("exit_patience", patience, 1), role)
    min_layer = for_role(per_role("exit_min_layer", min_layer, None), role)
    truncate_layers = for_role(per_role("truncate_layers", truncate_layers, None), role)
    if min_layer is None:
        min_layer = default_min_layer(num_layers)
    theta, k, l_min = validate_exit_args(threshold, patience, min_layer, num_layers)  # type: ignore[arg-type]
    return theta, k, l_min, validate_truncate_layers(truncate_layers, num_layers)  # type: ignore[arg-type]


def validate_exit_settings(
    threshold: object, patience: object, min_layer: object, truncate_layers: object, num_layers: int
) -> tuple[object, object, object, object]:
    """Check exit defaults that may be given per role and return them normalised: a single value stays single, a
    mapping becomes a dict over all :data:`ROLES`; ``l_min=None`` becomes :func:`default_min_layer`. Every role's
    combination is validated, and the error names the setting (and the role)."""
    names = ("exit_threshold", "exit_patience", "exit_min_layer", "truncate_layers")
    given = (threshold, patience, min_layer, truncate_layers)
    values = [per_role(name, value, fallback) for name, value, fallback in zip(names, given, (None, 1, None, None))]
    is_per_role = any(isinstance(value, Mapping) for value in values)
    resolved = {}
    for role in ROLES if is_per_role else ("default",):
        try:
            resolved[role] = resolve_exit_settings(*values, num_layers, role)
        except ValueError as error:
            raise ValueError(f"{error} (role {role!r})" if is_per_role else str(error)) from None
    out = [
        {role: resolved[role][i] for role in ROLES} if isinstance(value, Mapping) else resolved["default"][i]
        for i, value in enumerate(values)
    ]
    return out[0], out[1], out[2], out[3]


def default_min_layer(num_layers: int) -> int:
    """Default l_min: half the depth (3 of 6, 6 of 12), and never below 2."""
    return max(2, num_layers // 2) if num_layers > 1 else 1


def first_checked_layer(patience: int, min_layer: int) -> int:
    """The first layer at which the exit rule can fire: ``max(l_min, k + 1)``."""
    return max(min_layer, patience + 1)


def pooling_weights(attention_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, T)`` mask -> ``(B, 1, T)`` weights of the masked mean, computed once per batch and reused per layer."""
    weights = attention_mask.to(dtype)
    return (weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)).unsqueeze(1)


def mean_pool(hidden: Tensor, attention_mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Attention-masked mean over the sequence: ``(B, T, H), (B, T) -> (B, H)``.

    ``weights`` (from :func:`pooling_weights`) may be passed to skip recomputing them.
    """
    if weights is None:
        weights = pooling_weights(attention_mask, hidden.dtype)
    return torch.bmm(weights, hidden).squeeze(1)


def converged(pooled: Tensor, pooled_before: Tensor, threshold: float) -> Tensor:
    """Per-sample exit decision: ``cos(p_l, p_{l-k}) >= theta`` as a bool tensor of shape ``(B,)``."""
    return torch.nn.functional.cosine_similarity(pooled, pooled_before, dim=-1) >= threshold


@dataclass
class ExitStats:
    """Where samples stopped: the one exit-layer counter of st_leap (the module, evaluators, mteb, beir, sweeps).

    ``counts[l - 1]`` is the number of samples that stopped after layer ``l`` (``l = L`` is full depth).
    ``num_layers=0`` leaves the depth open until the first counts are added.
    """

    num_layers: int = 0
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * self.num_layers
        elif not self.num_layers:
            self.num_layers = len(self.counts)

    @classmethod
    def from_exit_layers(cls, exit_layers: Tensor | Sequence[int], num_layers: int) -> ExitStats:
        """The counts of 1-based exit layers."""
        stats = cls(num_layers)
        stats.update(exit_layers)
        return stats

    def update(self, exit_layers: Tensor | Sequence[int]) -> None:
        """Add the 1-based exit layers of a batch (a tensor, array or list); layers outside 1..L are an error."""
        layers = torch.as_tensor(exit_layers).detach().to("cpu", torch.long).reshape(-1)
        if layers.numel() and (int(layers.min()) < 1 or int(layers.max()) > self.num_layers):
            raise ValueError(f"exit layers must lie in 1..{self.num_layers}, got {sorted(set(layers.tolist()))}")
        self.add_counts(torch.bincount(layers - 1, minlength=self.num_layers).tolist())

    def add_counts(self, counts: Sequence[int]) -> None:
        """Add per-layer counts (another call's ``counts``)."""
        if not self.num_layers:
            self.num_layers = len(counts)
            self.counts = [0] * len(counts)
        if len(counts) != self.num_layers:
            raise ValueError(f"counts has {len(counts)} layers, expected {self.num_layers}")
        for i, n in enumerate(counts):
            self.counts[i] += int(n)

    def merge(self, other: ExitStats) -> ExitStats:
        """Add another counter's counts to this one; returns ``self``."""
        if other.num_samples or other.num_layers:
            self.add_counts(other.counts)
        return self

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    @property
    def expected_layers(self) -> float:
        """E[layers]: the mean number of layers run per sample (L when nothing exits)."""
        n = self.num_samples
        return sum((i + 1) * c for i, c in enumerate(self.counts)) / n if n else float("nan")

    @property
    def exit_rate(self) -> float:
        """Fraction of samples that stopped before the last layer."""
        n = self.num_samples
        return 1.0 - self.counts[-1] / n if n else float("nan")

    @property
    def layer_reduction(self) -> float:
        """Theoretical speed-up ``L / E[layers]`` (the paper's 'layer reduction')."""
        return self.num_layers / self.expected_layers if self.num_samples else float("nan")

    @property
    def fractions(self) -> list[float]:
        """Share of samples per exit layer."""
        n = self.num_samples
        return [c / n for c in self.counts] if n else [0.0] * self.num_layers

    def to_dict(self) -> dict[str, float | int | list[int] | list[float]]:
        return {
            "num_layers": self.num_layers,
            "num_samples": self.num_samples,
            "counts": list(self.counts),
            "fractions": self.fractions,
            "exit_rate": self.exit_rate,
            "expected_layers": self.expected_layers,
            "layer_reduction": self.layer_reduction,
        }


def exit_layers_from_pooled(pooled: Tensor, threshold: float, patience: int, min_layer: int) -> Tensor:
    """Exit layer of each sample given all its pooled states, without running the model again.

    Args:
        pooled: ``(N, L + 1, H)`` mean-pooled states, index 0 the embedding output and ``l`` layer ``l``.
        threshold, patience, min_layer: theta, k and l_min as in :func:`validate_exit_args`.

    Returns:
        ``(N,)`` 1-based exit layers (``L`` when the rule never fires), the same decisions the layer loop of
        :class:`~st_leap.EarlyExitTransformer` makes.
    """
    num_layers = pooled.shape[1] - 1
    exit_layer = torch.full((pooled.shape[0],), num_layers, dtype=torch.long)
    running = torch.ones(pooled.shape[0], dtype=torch.bool)
    for layer in range(first_checked_layer(patience, min_layer), num_layers):
        done = running & converged(pooled[:, layer], pooled[:, layer - patience], threshold).cpu()
        exit_layer[done] = layer
        running &= ~done
    return exit_layer
