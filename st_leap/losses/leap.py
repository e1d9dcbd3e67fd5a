from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from st_leap.exit_maps import exit_maps_module, mapped_layer_embeddings
from st_leap.exit_policy import mean_pool

# Named layer ranges (1-based, L = student depth, l_min = the exit rule's exit_min_layer).
LAYER_RANGES: dict[str, str] = {
    "all": "1..L",
    "below_final": "1..L-1",
    "exit": "l_min..L-1",
    "exit_and_final": "l_min..L",
    "before_exit": "l_min-1..L-1",
}
LayerSpec = str | Sequence[int]


@dataclass(frozen=True)
class LEAPSettings:
    """Every hyperparameter of :class:`LEAPLoss`, each in one place. The defaults are our CPU-scale recipe
    (``docs/training.md``); :meth:`paper` gives the paper's Table 14 / eqs. 3-9.

    The paper's terms keep the paper's names (``final``, ``intermediate``, ``exit``, ``contrastive``, ``late``,
    ``redundancy``) and formulas. ``anchor`` and ``adjacent`` are st_leap's own terms, not the paper's.

    Layer arguments take a list of 1-based layers or a named range: ``"all"`` (1..L), ``"below_final"``
    (1..L-1), ``"exit"`` (l_min..L-1), ``"exit_and_final"`` (l_min..L), ``"before_exit"`` (l_min-1..L-1).
    """

    # paper eq. 3: 1 - cos(e_s^L, e_t)
    final_weight: float = 4.0
    # paper eq. 3 (alpha): mean over layers of 1 - cos(e_s^l, e_t^pi(l))
    intermediate_weight: float = 0.0
    intermediate_layers: LayerSpec = "all"
    # paper eqs. 4-5 (beta): soft margin sigmoid(slope * (tau - cos)) to the teacher and to sg(student final)
    exit_weight: float = 1.0
    exit_layers: LayerSpec = "exit"
    exit_layer_weights: tuple[float, ...] | None = None
    exit_tau: float = 0.98
    exit_slope: float = 5.0
    # "sum": the paper's L_exit^(t) + beta_stu * L_exit^(s); "convex": ours, (1 - a) L_exit^(t) + a L_exit^(s)
    exit_targets: Literal["sum", "convex"] = "convex"
    student_weight: float = 0.7
    # progressive student weight: 0 before start, linear to student_weight at end (fractions of training)
    student_weight_ramp: tuple[float, float] | None = None
    # paper eq. 3 (delta): KL between batch similarity softmaxes, diagonal excluded
    contrastive_weight: float = 1.0
    contrastive_temperature: float = 0.05
    contrastive_layers: Literal["final", "exit"] = "exit"
    # "student_teacher": KL(P_s || P_t) as printed in the paper; "teacher_student": KL(P_t || P_s), ours
    contrastive_direction: Literal["student_teacher", "teacher_student"] = "teacher_student"
    # paper eq. 8 (epsilon): mean over layers of (1 - cos(e_l, e_L)) ** 0.5
    late_weight: float = 0.0
    late_layers: LayerSpec = "exit"
    # paper eq. 9 (gamma): -mean_l min(||e_{l+1} - e_l||, cap), e normalized
    redundancy_weight: float = 0.0
    redundancy_layers: LayerSpec = "below_final"
    redundancy_cap: float = 0.3
    # ours: linear dual-target pull (1 - a)(1 - cos(P p_l, t)) + a (1 - cos(p_l, sg p_L))
    anchor_weight: float = 12.0
    anchor_layers: LayerSpec = "before_exit"
    # ours: 1 - cos(p_{l-1}, sg p_l), the quantity the adjacent-cosine exit rule reads
    adjacent_weight: float = 6.0
    adjacent_layers: LayerSpec = "exit_and_final"
    # ours: teacher-facing layer terms read each layer through the model's exit map (st_leap.exit_maps), which is
    # trained with the encoder; training and inference then use the same mapped embedding
    use_exit_maps: bool = False

    def __post_init__(self) -> None:
        for name in ("final", "intermediate", "exit", "contrastive", "late", "redundancy", "anchor", "adjacent"):
            value = getattr(self, f"{name}_weight")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}_weight must be a finite number >= 0, got {value!r}")
        if not (-1.0 <= self.exit_tau <= 1.0):
            raise ValueError(f"exit_tau must be in [-1, 1], got {self.exit_tau!r}")
        if not (self.exit_slope > 0 and math.isfinite(self.exit_slope)):
            raise ValueError(f"exit_slope must be a finite number > 0, got {self.exit_slope!r}")
        if not (0.0 <= self.student_weight <= 1.0) and self.exit_targets == "convex":
            raise ValueError(f"student_weight must be in [0, 1] with exit_targets='convex', got {self.student_weight!r}")
        if not (math.isfinite(self.student_weight) and self.student_weight >= 0):
            raise ValueError(f"student_weight must be a finite number >= 0, got {self.student_weight!r}")
        if self.exit_targets not in ("sum", "convex"):
            raise ValueError(f"exit_targets must be 'sum' or 'convex', got {self.exit_targets!r}")
        if self.student_weight_ramp is not None:
            ramp = tuple(self.student_weight_ramp)
            if len(ramp) != 2 or not (0.0 <= ramp[0] < ramp[1] <= 1.0):
                raise ValueError(
                    f"student_weight_ramp must be (start, end) fractions of training with 0 <= start < end <= 1, "
                    f"got {self.student_weight_ramp!r}"
                )
            object.__setattr__(self, "student_weight_ramp", (float(ramp[0]), float(ramp[1])))
        if not self.contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature!r}")
        if self.contrastive_layers not in ("final", "exit"):
            raise ValueError(f"contrastive_layers must be 'final' or 'exit', got {self.contrastive_layers!r}")
        if self.contrastive_direction not in ("student_teacher", "teacher_student"):
            raise ValueError(
                "contrastive_direction must be 'student_teacher' or 'teacher_student', "
                f"got {self.contrastive_direction!r}"
            )
        if not (self.redundancy_cap > 0 and math.isfinite(self.redundancy_cap)):
            raise ValueError(f"redundancy_cap must be a finite number > 0, got {self.redundancy_cap!r}")
        for name in ("intermediate", "exit", "late", "redundancy", "anchor", "adjacent"):
            spec = getattr(self, f"{name}_layers")
            if isinstance(spec, str):
                if spec not in LAYER_RANGES:
                    raise ValueError(f"{name}_layers must be a list of layers or one of {sorted(LAYER_RANGES)}, got {spec!r}")
            else:
                object.__setattr__(self, f"{name}_layers", tuple(spec))
        if self.exit_layer_weights is not None:
            object.__setattr__(self, "exit_layer_weights", tuple(float(w) for w in self.exit_layer_weights))

    @classmethod
    def paper(cls, **overrides: Any) -> LEAPSettings:
        """The paper's loss as printed: eq. 7 with the weights of Table 14 and the terms of eqs. 3-9.

        alpha = 0.3, beta = 0.4, beta_stu = 0.7, delta = 0.3, epsilon = 0.2, gamma = 0.05, tau = 0.98, slope 10,
        student exit weight ramped over 10%-60% of training. Choices where the text is open (docs/training.md,
        "The paper's loss"): the late term on l_min..L-1 (appendix B.2's layers 6-11 of 12; eq. 8's 9-11 are the
        same three layers at L = 6, l_min = 3), the eq. 9 distance cap = 0.3 (the text reuses delta), a linear
        ramp from 0 at 10% to beta_stu at 60%, KL(P_s || P_t) as printed with the diagonal excluded, the
        temperature 0.05 (not given), and uniform layer weights w_l (not given).
        """
        values: dict[str, Any] = {
            "final_weight": 1.0,
            "intermediate_weight": 0.3,
            "intermediate_layers": "all",
            "exit_weight": 0.4,
            "exit_layers": "all",
            "exit_tau": 0.98,
            "exit_slope": 10.0,
            "exit_targets": "sum",
            "student_weight": 0.7,
            "student_weight_ramp": (0.1, 0.6),
            "contrastive_weight": 0.3,
            "contrastive_temperature": 0.05,
            "contrastive_layers": "final",
            "contrastive_direction": "student_teacher",
            "late_weight": 0.2,
            "late_layers": "exit",
            "redundancy_weight": 0.05,
            "redundancy_layers": "below_final",
            "redundancy_cap": 0.3,
            "anchor_weight": 0.0,
            "adjacent_weight": 0.0,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> LEAPSettings:
        """``"recipe"`` (the class defaults) or ``"paper"`` (:meth:`paper`), with ``overrides`` on top."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"Unknown LEAPLoss settings {unknown}; allowed: {sorted(known)}")
        if preset == "paper":
            return cls.paper(**overrides)
        if preset == "recipe":
            return cls(**overrides)
        raise ValueError(f"preset must be 'recipe' or 'paper', got {preset!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def resolve_layers(name: str, spec: LayerSpec, num_layers: int, exit_min_layer: int, lo: int = 1) -> list[int]:
    """The 1-based layers of a layer argument: a list, or a named range of :data:`LAYER_RANGES`."""
    L = num_layers
    if isinstance(spec, str):
        start, stop = {
            "all": (1, L),
            "below_final": (1, L - 1),
            "exit": (exit_min_layer, L - 1),
            "exit_and_final": (exit_min_layer, L),
            "before_exit": (exit_min_layer - 1, L - 1),
        }[spec]
        return list(range(max(lo, start), stop + 1))
    layers = list(spec)
    bad = [x for x in layers if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= L]
    if bad:
        raise ValueError(f"{name} must be ints in {lo}..{L}, got {layers!r}")
    return sorted(set(layers))


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> dict[int, int]:
    """Uniform layer mapping: student layer ``l`` (1-based) to teacher layer ``round(l * L_t / L_s)``.

    The last student layer always maps to the last teacher layer; a teacher as deep as the student maps
    every layer to itself.
    """
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ValueError(
            f"Layer counts must be >= 1, got num_student_layers={num_student_layers!r}, "
            f"num_teacher_layers={num_teacher_layers!r}"
        )
    return {
        layer: max(1, min(num_teacher_layers, round(layer * num_teacher_layers / num_student_layers)))
        for layer in range(1, num_student_layers + 1)
    }


def soft_margin(cos: Tensor, tau: float, slope: float) -> Tensor:
    """The exit loss of one layer, ``sigmoid(s * (tau - cos))``, averaged over the batch."""
    return torch.sigmoid(slope * (tau - cos)).mean()


def offdiag_similarity_kl(
    student: Tensor, teacher: Tensor, temperature: float, direction: str = "teacher_student"
) -> Tensor:
    """KL between row-softmaxed cosine-similarity matrices of a batch, diagonal excluded.

    ``direction="student_teacher"`` is KL(P_s || P_t), as the paper prints it; ``"teacher_student"`` is
    KL(P_t || P_s). With the diagonal in, every row's softmax at a low temperature is a one-hot on the diagonal
    for both models and the KL is ~0 whatever the embeddings; without it the rows compare how each model ranks
    the *other* sentences of the batch. Needs a batch of at least 2.
    """
    if student.shape[0] < 2:
        return student.new_zeros(())
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    log_p_s = F.log_softmax((s @ s.T / temperature).masked_fill(eye, float("-inf")), dim=-1).masked_fill(eye, 0.0)
    log_p_t = F.log_softmax((t @ t.T / temperature).masked_fill(eye, float("-inf")), dim=-1).masked_fill(eye, 0.0)
    if direction == "student_teacher":
        log_p_t, log_p_s = log_p_s, log_p_t
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def late_distance(layer: Tensor, final: Tensor, eps: float = 1e-6) -> Tensor:
    """Paper eq. 8 for one layer: ``(1 - cos(e_l, e_L)) ** 0.5``, batch mean. ``1 - cos`` is clamped at ``eps``
    so the square root's gradient stays finite when the layers coincide."""
    return (1 - _cos(layer, final)).clamp_min(eps).sqrt().mean()


def capped_step(lower: Tensor, upper: Tensor, cap: float) -> Tensor:
    """Paper eq. 9 for one pair: ``min(||e_{l+1} - e_l||, cap)`` of the normalized embeddings, batch mean."""
    return (F.normalize(upper, dim=-1) - F.normalize(lower, dim=-1)).norm(dim=-1).clamp_max(cap).mean()


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a, b, dim=-1)


class _FrozenTeacher:
    """Holds the live teacher outside of ``nn.Module`` registration, so it is never optimized, never saved in the
    loss state dict, and never wrapped by the trainer."""

    def __init__(self, model: SentenceTransformer) -> None:
        self.model = model
        model.eval()
        model.requires_grad_(False)


class LEAPLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        teacher: SentenceTransformer | None = None,
        settings: LEAPSettings | None = None,
        *,
        preset: Literal["recipe", "paper"] = "recipe",
        exit_min_layer: int = 3,
        total_steps: int | None = None,
        num_teacher_layers: int | None = None,
        teacher_dim: int | None = None,
        **overrides: Any,
    ) -> None:
        """
        LEAP (Layer-wise Exit-Aware Pretraining) loss: trains a sentence-transformers model so that its
        intermediate layers converge to the final embedding, which lets
        ``encode(texts, exit_threshold=...)`` stop most samples before the last layer.

        With ``e_l`` the attention-masked mean of the student's hidden states after layer ``l`` (1-based, the
        quantity the exit rule looks at; cosines make its normalization implicit), ``e_L`` the final one, ``t``
        the teacher's sentence embedding, ``t_m`` the teacher's pooled layer ``m``, ``P`` a learned linear
        projection (only when the teacher is wider or narrower than the student), ``sg`` stop-gradient and ``a``
        the student weight (beta_stu), the loss is the weighted sum of these terms. The first six are the
        paper's (eq. 7), with the paper's names:

        - ``final`` (eq. 3): ``1 - cos(P e_L, t)``;
        - ``intermediate`` (eq. 3, alpha): mean over ``intermediate_layers`` of ``1 - cos(P e_l, t_{m(l)})`` with
          the uniform layer map ``m(l) = round(l * L_t / L_s)``;
        - ``exit`` (eqs. 4-5, beta): ``E_t + a E_s`` (``exit_targets="sum"``, the paper) or ``(1 - a) E_t + a E_s``
          (``"convex"``, ours), with ``E_t`` the ``w_l``-weighted mean over ``exit_layers`` of
          ``sigmoid(slope (tau - cos(P e_l, t)))`` and ``E_s`` the same over ``exit_layers`` below ``L`` against
          ``sg e_L``; ``a`` can ramp from 0 over a window of training (``student_weight_ramp``);
        - ``contrastive`` (eq. 3, delta): KL between the two models' row-softmaxed batch cosine similarity
          matrices, diagonal excluded, on the final embedding (and each exit layer with
          ``contrastive_layers="exit"``);
        - ``late`` (eq. 8, epsilon): mean over ``late_layers`` of ``(1 - cos(e_l, e_L)) ** 0.5``;
        - ``redundancy`` (eq. 9, gamma): ``-mean_l min(||e_{l+1} - e_l||, redundancy_cap)`` over
          ``redundancy_layers``, normalized embeddings: it *rewards* distance between adjacent layers up to the
          cap, so that layers do not collapse.

        Two terms are st_leap's own, not the paper's:

        - ``anchor``: mean over ``anchor_layers`` of the linear dual-target distance
          ``(1 - a)(1 - cos(P e_l, t)) + a (1 - cos(e_l, sg e_L))`` (it does not saturate as the soft margin does);
        - ``adjacent``: mean over ``adjacent_layers`` of ``1 - cos(e_{l-1}, sg e_l)``: it pulls each layer toward
          the next, the quantity the adjacent-cosine exit rule reads (the opposite force of ``redundancy``).

        With ``use_exit_maps=True`` (ours) the model carries exit maps (:mod:`st_leap.exit_maps`, fitted in closed
        form first): the exit, anchor and contrastive terms read each layer below ``L`` through its map, and the maps
        are trained with the encoder (they are model parameters), so training and inference use the same mapped
        embedding.

        Every term whose weight is 0 is skipped. ``forward`` returns the weighted terms as a dict, so the Trainer
        logs each one and sums them.

        Args:
            model: The student SentenceTransformer. Its first module must be a ``Transformer`` (or
                ``st_leap.EarlyExitTransformer``); ``output_hidden_states`` is switched on.
            teacher: A live teacher SentenceTransformer, frozen here (eval mode, ``requires_grad=False``, no
                gradients, kept out of the loss's parameters). ``None`` means the teacher embeddings come as
                labels (see Inputs); without labels either, the teacher is the student's own stop-gradient
                final embedding (self-distillation).
            settings: A :class:`LEAPSettings`; default: the ``preset``'s, with ``overrides`` on top.
            preset: ``"recipe"`` (our CPU-scale recipe, the :class:`LEAPSettings` defaults) or ``"paper"``
                (:meth:`LEAPSettings.paper`, Table 14 and eqs. 3-9 as printed).
            exit_min_layer: The exit rule's l_min, used by the named layer ranges.
            total_steps: Number of training steps, for ``student_weight_ramp`` (fractions of training). Left out,
                it is read from the running ``SentenceTransformerTrainer`` (or ``model.fit``) when training starts,
                so ``LEAPLoss(model, preset="paper")`` works as written; an explicit value wins.
            num_teacher_layers: Depth of the teacher when embeddings come as labels (for the layer map);
                read from the live teacher otherwise.
            teacher_dim: Width of the teacher embeddings when they come as labels (creates the projection);
                read from the live teacher otherwise.
            overrides: Any field of :class:`LEAPSettings` (for example ``exit_weight=0.0``).

        References:
            - Kapadia et al., LEAP: Layer-wise Exit-Aware Pretraining for Efficient Transformer Inference,
              arXiv 2605.01058 (ACL 2026 Industry), eqs. 3-9, Table 14.
            - st_leap docs: docs/training.md

        Requirements:
            1. The student's first module exposes ``all_layer_embeddings`` (a ``Transformer`` with
               ``output_hidden_states``; switched on here).

        Inputs:
            +---------------------------------+-----------------------------------------------------------+
            | Texts                           | Labels                                                    |
            +=================================+===========================================================+
            | (sentence_A)                    | none (live teacher or self-distillation)                  |
            +---------------------------------+-----------------------------------------------------------+
            | (sentence_A)                    | teacher embedding ``(D_t,)``, or ``(1 + K, D_t)``: final  |
            |                                 | then the pooled teacher layer of each intermediate layer  |
            |                                 | (``st_leap.teacher.compute_teacher_embeddings``)          |
            +---------------------------------+-----------------------------------------------------------+

        Relations:
            - :class:`sentence_transformers.sentence_transformer.losses.AdaptiveLayerLoss` trains random
              layers against the final one; LEAPLoss trains the layers the exit rule looks at against the
              final one *and* a teacher, with a margin at the exit threshold.

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from sentence_transformers.sentence_transformer.training_args import (
                    SentenceTransformerTrainingArguments,
                )
                from st_leap import losses

                model = SentenceTransformer("all-MiniLM-L6-v2")
                teacher = SentenceTransformer("all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({"sentence": ["It's nice weather outside today.", "He drove to work."]})
                loss = losses.LEAPLoss(model, teacher=teacher)  # or LEAPLoss(model, preset="paper")
                args = SentenceTransformerTrainingArguments(output_dir="out", learning_rate=1e-4, warmup_steps=24)
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        if "min_layer" in overrides:
            warnings.warn("LEAPLoss(min_layer=...) is now exit_min_layer=...", DeprecationWarning, stacklevel=2)
            exit_min_layer = overrides.pop("min_layer")
        if preset == "default":
            preset = "recipe"
        if settings is None:
            settings = LEAPSettings.from_preset(preset, **overrides)
        elif overrides:
            settings = replace(settings, **overrides)
        self.settings = settings
        self.preset = preset

        self.model = model
        config = enable_hidden_states(model)
        self.num_layers = L = int(config.num_hidden_layers)
        self.student_dim = int(model.get_embedding_dimension())
        self.hidden_dim = int(config.hidden_size)
        if not (isinstance(exit_min_layer, int) and not isinstance(exit_min_layer, bool) and 1 <= exit_min_layer <= L):
            raise ValueError(f"exit_min_layer must be an int in 1..{L}, got {exit_min_layer!r}")
        self.exit_min_layer = exit_min_layer
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be None (taken from the Trainer) or an int >= 1, got {total_steps!r}")
        self.total_steps = total_steps
        self._total_steps_from_trainer = False

        def layers(name: str, lo: int = 1) -> list[int]:
            return resolve_layers(f"{name}_layers", getattr(settings, f"{name}_layers"), L, exit_min_layer, lo)

        self.intermediate_layers = layers("intermediate")
        self.exit_layers = layers("exit")
        self.late_layers = [x for x in layers("late") if x < L]
        self.redundancy_layers = [x for x in layers("redundancy") if x < L]
        self.anchor_layers = layers("anchor")
        self.adjacent_layers = layers("adjacent", lo=2)
        if settings.exit_layer_weights is None:
            self.exit_layer_weights = [1.0] * len(self.exit_layers)
        else:
            weights = list(settings.exit_layer_weights)
            if len(weights) != len(self.exit_layers) or any(not math.isfinite(w) or w < 0 for w in weights):
                raise ValueError(
                    f"exit_layer_weights must be {len(self.exit_layers)} finite numbers >= 0 (one per exit layer "
                    f"{self.exit_layers}), got {weights!r}"
                )
            self.exit_layer_weights = weights

        # Teacher.
        self._teacher = _FrozenTeacher(teacher) if teacher is not None else None
        self._same_tokenizer = False
        if teacher is not None:
            t_config = teacher[0].auto_model.config
            if settings.intermediate_weight > 0:
                t_config.output_hidden_states = True
            num_teacher_layers = int(t_config.num_hidden_layers)
            teacher_dim = int(teacher.get_embedding_dimension())
            self._same_tokenizer = _same_vocab(model, teacher)
        self.num_teacher_layers = num_teacher_layers if num_teacher_layers is not None else L
        self.teacher_dim = teacher_dim if teacher_dim is not None else self.student_dim
        self.layer_map = uniform_layer_map(L, self.num_teacher_layers)
        # Learned projections when widths differ; trained with the student (they are parameters of the loss).
        self.projection = (
            nn.Linear(self.student_dim, self.teacher_dim) if self.teacher_dim != self.student_dim else None
        )
        self.hidden_projection = (
            nn.Linear(self.hidden_dim, self.teacher_dim) if self.teacher_dim != self.hidden_dim else None
        )
        self.register_buffer("_steps", torch.zeros((), dtype=torch.long), persistent=False)
        if settings.use_exit_maps:
            maps = exit_maps_module(model)
            if maps is None:
                raise ValueError(
                    "use_exit_maps=True needs a model with exit maps: fit them first (st_leap.exit_maps.fit_exit_maps "
                    "or st-leap fit-maps), which also gives the maps their closed-form starting point"
                )
            if maps.out_features != self.teacher_dim:
                raise ValueError(
                    f"The exit maps map into {maps.out_features} dimensions, the teacher embeds into {self.teacher_dim}: "
                    "fit the maps with target=<the teacher>"
                )

    def __getattr__(self, name: str) -> Any:
        # Hyperparameters read as attributes (loss.exit_weight), from the one settings object.
        settings = self.__dict__.get("settings")
        if settings is not None and name in LEAPSettings.__dataclass_fields__ and not name.endswith("_layers"):
            return getattr(settings, name)
        return super().__getattr__(name)

    # ----------------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> SentenceTransformer | None:
        """The live teacher (frozen), or None."""
        return self._teacher.model if self._teacher is not None else None

    @property
    def step(self) -> int:
        """Training forwards counted so far: the progress of ``student_weight_ramp`` (``step / total_steps``).
        A resumed run sets it to the checkpoint's global step (:mod:`st_leap.training` does so at train begin)."""
        return int(self._steps.item())

    @step.setter
    def step(self, value: int) -> None:
        self._steps.fill_(int(value))

    def current_student_weight(self) -> float:
        """The student weight ``a`` at the current training step (progressive schedule)."""
        ramp = self.settings.student_weight_ramp
        if ramp is None:
            return self.settings.student_weight
        progress = float(self._steps.item()) / self.resolved_total_steps()
        start, end = ramp
        return self.settings.student_weight * min(1.0, max(0.0, (progress - start) / (end - start)))

    def resolved_total_steps(self) -> int:
        """``total_steps`` as given, else the number of training forwards of the running ``SentenceTransformerTrainer``
        (also the one ``model.fit`` builds): its ``state.max_steps`` times the gradient accumulation steps, read once
        when training starts. Outside a Trainer an explicit ``total_steps`` is needed."""
        if self.total_steps is None:
            trainer = _running_trainer()
            if trainer is None or not getattr(trainer.state, "max_steps", 0):
                raise ValueError(
                    f"student_weight_ramp={self.settings.student_weight_ramp} is given in fractions of training and "
                    "no running SentenceTransformerTrainer / model.fit was found to read the number of steps from: "
                    "pass total_steps"
                )
            self.total_steps = int(trainer.state.max_steps) * int(trainer.args.gradient_accumulation_steps)
            self._total_steps_from_trainer = True
        return self.total_steps

    def teacher_layers(self) -> list[int]:
        """Teacher layers (1-based) whose pooled states the intermediate term needs, in label order."""
        return [self.layer_map[layer] for layer in self.intermediate_layers]

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        features = list(sentence_features)[0]
        output, hidden_states = forward_all_layers(self.model, features)
        mask = output["attention_mask"]
        pooled = {layer: mean_pool(hidden_states[layer], mask) for layer in range(1, self.num_layers + 1)}
        student_embedding = output["sentence_embedding"]

        mapped = None
        if self.settings.use_exit_maps:
            maps = exit_maps_module(self.model)
            mapped = mapped_layer_embeddings(self.model, hidden_states, mask, range(1, self.num_layers), maps)
        teacher_embedding, teacher_pooled = self._teacher_targets(features, labels, student_embedding.device)
        if self.training:
            self._steps += 1
        return LEAPTerms(
            self.compute_loss_from_embeddings(student_embedding, pooled, teacher_embedding, teacher_pooled, mapped)
        )

    @torch.no_grad()
    def _teacher_targets(
        self, features: dict[str, Tensor], labels: Tensor | None, device: torch.device
    ) -> tuple[Tensor | None, dict[int, Tensor] | None]:
        """Teacher final embedding ``(B, D_t)`` and pooled teacher layers ``{student layer: (B, D_t)}``."""
        needs_layers = self.settings.intermediate_weight > 0
        if labels is not None and labels.dim() >= 2:
            labels = labels.to(device=device, dtype=torch.float32)
            if labels.dim() == 2:
                if needs_layers:
                    raise ValueError(
                        "intermediate_weight > 0 needs per-layer teacher labels of shape (batch, 1 + "
                        f"{len(self.intermediate_layers)}, dim), got labels of shape {tuple(labels.shape)}"
                    )
                return labels, None
            expected = 1 + len(self.intermediate_layers)
            if labels.dim() != 3 or labels.shape[1] != expected:
                raise ValueError(
                    f"Teacher labels must have shape (batch, dim) or (batch, {expected}, dim) (final, then one "
                    f"teacher layer per intermediate layer {self.intermediate_layers}), got {tuple(labels.shape)}"
                )
            return labels[:, 0], {layer: labels[:, 1 + i] for i, layer in enumerate(self.intermediate_layers)}
        if self._teacher is None:
            return None, None
        teacher = self._teacher.model
        teacher.eval()
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        if self._same_tokenizer:
            t_features = {k: v for k, v in features.items() if isinstance(v, Tensor) and k in _TOKEN_KEYS}
        else:
            texts = self.model.tokenizer.batch_decode(features["input_ids"], skip_special_tokens=True)
            t_features = teacher.preprocess(texts)
            t_features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in t_features.items()}
        t_out = teacher(dict(t_features))
        t_embedding = t_out["sentence_embedding"].float()
        t_pooled = None
        if needs_layers:
            t_hidden = t_out["all_layer_embeddings"]
            t_mask = t_out["attention_mask"]
            t_pooled = {
                layer: mean_pool(t_hidden[self.layer_map[layer]], t_mask).float()
                for layer in self.intermediate_layers
            }
        return t_embedding, t_pooled

    def compute_loss_from_embeddings(
        self,
        student_embedding: Tensor,
        pooled: dict[int, Tensor],
        teacher_embedding: Tensor | None,
        teacher_pooled: dict[int, Tensor] | None = None,
        mapped: dict[int, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The LEAP terms from embeddings only (testable without a model).

        Args:
            student_embedding: The student's sentence embedding ``(B, D_s)``.
            pooled: ``{layer: (B, H)}`` masked-mean hidden states of the student, layers 1..L.
            teacher_embedding: The teacher's sentence embedding ``(B, D_t)``, or None (self-distillation:
                the stop-gradient student final embedding stands in).
            teacher_pooled: ``{student layer: (B, D_t)}`` pooled teacher layers for the intermediate term.
            mapped: ``{layer: (B, D_t)}`` each layer below ``L`` through its exit map (``use_exit_maps``): the exit,
                anchor and contrastive terms then compare the mapped embedding to the teacher instead of the
                (projected) pooled state.

        Returns:
            The weighted terms whose weight is > 0, by name; their sum is the loss.
        """
        s = self.settings
        L = self.num_layers
        final_state = pooled[L].detach()
        if teacher_embedding is None:
            teacher_embedding = student_embedding.detach()
            project = project_hidden = _identity
        else:
            project = self.projection if self.projection is not None else _identity
            project_hidden = self.hidden_projection if self.hidden_projection is not None else _identity
        a = self.current_student_weight()

        def to_teacher_space(layer: int) -> Tensor:
            if mapped is not None and layer in mapped:
                return mapped[layer]
            return project_hidden(pooled[layer])

        out: dict[str, Tensor] = {}
        if s.final_weight > 0:
            out["final"] = s.final_weight * (1 - _cos(project(student_embedding), teacher_embedding)).mean()
        if s.intermediate_weight > 0 and self.intermediate_layers:
            if teacher_pooled is None:
                raise ValueError(
                    "intermediate_weight > 0 needs the teacher's per-layer states: a live teacher or per-layer labels"
                )
            terms = [
                (1 - _cos(project_hidden(pooled[layer]), teacher_pooled[layer])).mean()
                for layer in self.intermediate_layers
            ]
            out["intermediate"] = s.intermediate_weight * torch.stack(terms).mean()
        if s.exit_weight > 0 and self.exit_layers:
            weights = dict(zip(self.exit_layers, self.exit_layer_weights, strict=True))
            to_teacher = torch.stack(
                [
                    weights[layer] * soft_margin(_cos(to_teacher_space(layer), teacher_embedding), s.exit_tau, s.exit_slope)
                    for layer in self.exit_layers
                ]
            ).mean()
            below = [layer for layer in self.exit_layers if layer < L]
            to_student = (
                torch.stack(
                    [weights[layer] * soft_margin(_cos(pooled[layer], final_state), s.exit_tau, s.exit_slope) for layer in below]
                ).mean()
                if below
                else to_teacher.new_zeros(())
            )
            teacher_part = 1.0 if s.exit_targets == "sum" else 1.0 - a
            out["exit"] = s.exit_weight * (teacher_part * to_teacher + a * to_student)
        if s.contrastive_weight > 0:
            def kl(x: Tensor) -> Tensor:
                return offdiag_similarity_kl(x, teacher_embedding, s.contrastive_temperature, s.contrastive_direction)

            terms = [kl(student_embedding)]
            if s.contrastive_layers == "exit":
                terms += [kl(mapped[layer] if mapped and layer in mapped else pooled[layer]) for layer in self.exit_layers]
            out["contrastive"] = s.contrastive_weight * torch.stack(terms).mean()
        if s.late_weight > 0 and self.late_layers:
            terms = [late_distance(pooled[layer], pooled[L]) for layer in self.late_layers]
            out["late"] = s.late_weight * torch.stack(terms).mean()
        if s.redundancy_weight > 0 and self.redundancy_layers:
            terms = [capped_step(pooled[layer], pooled[layer + 1], s.redundancy_cap) for layer in self.redundancy_layers]
            out["redundancy"] = -s.redundancy_weight * torch.stack(terms).mean()
        if s.anchor_weight > 0 and self.anchor_layers:
            terms = [
                (1 - a) * (1 - _cos(to_teacher_space(layer), teacher_embedding)).mean()
                + a * (1 - _cos(pooled[layer], final_state)).mean()
                for layer in self.anchor_layers
            ]
            out["anchor"] = s.anchor_weight * torch.stack(terms).mean()
        if s.adjacent_weight > 0 and self.adjacent_layers:
            terms = [(1 - _cos(pooled[layer - 1], pooled[layer].detach())).mean() for layer in self.adjacent_layers]
            out["adjacent"] = s.adjacent_weight * torch.stack(terms).mean()
        if not out:
            raise ValueError("Every LEAPLoss term has weight 0: nothing to train")
        return out

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            **self.settings.to_dict(),
            "exit_min_layer": self.exit_min_layer,
            "total_steps": self.total_steps,
            "teacher": "live" if self._teacher is not None else "labels or self",
        }

    @property
    def citation(self) -> str:
        return LEAP_CITATION


LEAP_CITATION = """@inproceedings{kapadia2026leap,
    title={LEAP: Layer-wise Exit-Aware Pretraining for Efficient Transformer Inference},
    author={Kapadia and others},
    booktitle={Proceedings of the 64th Annual Meeting of the Association for Computational Linguistics: Industry Track},
    year={2026},
    eprint={2605.01058},
    archivePrefix={arXiv},
}
"""
"""BibTeX of the LEAP paper, cited by LEAPLoss.citation and by st_leap model cards."""


class LEAPTerms(dict):
    """LEAPLoss's output: ``{term name: weighted term}``, a plain dict for the Trainer (which sums the terms and
    logs each one). Arithmetic on it (what sentence-transformers' wrapper losses do with a base loss) raises a
    ``TypeError`` that says why LEAPLoss is not wrapped and what to use instead."""

    _WHY = (
        "LEAPLoss cannot be wrapped by MatryoshkaLoss, Matryoshka2dLoss or AdaptiveLayerLoss. Those wrappers call "
        "their base loss once per truncated dimension or per layer and add up the results. LEAPLoss returns its "
        "terms as a dict so the Trainer logs each one, and it already trains every layer itself (the intermediate, "
        "exit and contrastive terms), so wrapping it in AdaptiveLayerLoss would supervise the layers twice. Use "
        "LEAPLoss on its own. For Matryoshka dimensions, train with MatryoshkaLoss first and then retrofit with "
        "LEAPLoss, or add a separate MatryoshkaLoss(MSELoss) objective on another dataset of the same Trainer "
        "(a dict of losses)."
    )

    def _refuse(self, *args: Any) -> Any:
        raise TypeError(self._WHY)

    __mul__ = __rmul__ = __add__ = __radd__ = __truediv__ = __sub__ = __rsub__ = _refuse


def enable_hidden_states(model: SentenceTransformer) -> Any:
    """Switch on every layer's token states (``output_hidden_states``) of the model's first module; returns its
    Hugging Face config. The layer-wise losses read them."""
    backbone = model[0]
    config = getattr(getattr(backbone, "auto_model", None), "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise ValueError(
            f"The first module of the model must be a Transformer with a Hugging Face config, got "
            f"{type(backbone).__name__}"
        )
    config.output_hidden_states = True
    return config


def forward_all_layers(model: SentenceTransformer, features: dict[str, Tensor]) -> tuple[dict[str, Tensor], Any]:
    """The model's forward output and its ``all_layer_embeddings`` (index 0 the embeddings, ``l`` layer ``l``)."""
    output = model(features)
    hidden_states = output.get("all_layer_embeddings")
    if hidden_states is None:
        raise ValueError(
            "The model did not return 'all_layer_embeddings': its first module must be a Transformer with "
            "config.output_hidden_states=True"
        )
    return output, hidden_states


def _running_trainer() -> Any:
    """The ``transformers.Trainer`` whose training step is calling this loss, found on the call stack (the
    ``self`` of its ``compute_loss``), or None."""
    import inspect

    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None


def _identity(x: Tensor) -> Tensor:
    return x


_TOKEN_KEYS = {"input_ids", "attention_mask", "token_type_ids"}


def _same_vocab(a: SentenceTransformer, b: SentenceTransformer) -> bool:
    ta, tb = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    if ta is None or tb is None:
        return False
    try:
        return type(ta).__name__ == type(tb).__name__ and ta.get_vocab() == tb.get_vocab()
    except Exception:  # noqa: BLE001 - tokenizers without get_vocab: re-tokenize to be safe
        return False
