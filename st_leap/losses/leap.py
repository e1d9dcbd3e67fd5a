from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from st_leap.exit_policy import mean_pool

# Hyperparameters of the paper's preset. Only the values quoted in the st_leap issue tracker (issue 3) are
# known to us: tau = 0.98, slope s = 10, student weight 0.7, contrastive temperature 0.05. The weights of the
# other terms are set to 1.0 (the neutral value), see docs/training.md.
PAPER_PRESET: dict[str, Any] = {
    "final_weight": 1.0,
    "intermediate_weight": 1.0,
    "exit_weight": 1.0,
    "exit_tau": 0.98,
    "exit_slope": 10.0,
    "student_weight": 0.7,
    "student_weight_warmup_steps": 0,
    "contrastive_weight": 1.0,
    "contrastive_temperature": 0.05,
    "contrastive_layers": "final",
    "late_weight": 0.0,
    "redundancy_weight": 0.0,
}

# Our defaults: the values our CPU-scale measurements support (docs/training.md, benchmarks/train_recipe/).
DEFAULTS: dict[str, Any] = {
    "final_weight": 1.0,
    "intermediate_weight": 0.0,
    "exit_weight": 1.0,
    "exit_tau": 0.98,
    "exit_slope": 5.0,
    "student_weight": 0.7,
    "student_weight_warmup_steps": 0,
    "contrastive_weight": 1.0,
    "contrastive_temperature": 0.05,
    "contrastive_layers": "exit",
    "late_weight": 12.0,
    "redundancy_weight": 1.0,
}


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


def offdiag_similarity_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) between row-softmaxed cosine-similarity matrices of a batch, diagonal excluded.

    With the diagonal in, every row's softmax at a low temperature is a one-hot on the diagonal for both
    models and the KL is ~0 whatever the embeddings; without it the rows compare how each model ranks the
    *other* sentences of the batch. Needs a batch of at least 2.
    """
    if student.shape[0] < 2:
        return student.new_zeros(())
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    sim_s = s @ s.T / temperature
    sim_t = t @ t.T / temperature
    eye = torch.eye(sim_s.shape[0], dtype=torch.bool, device=sim_s.device)
    sim_s = sim_s.masked_fill(eye, float("-inf"))
    sim_t = sim_t.masked_fill(eye, float("-inf"))
    log_p_s = F.log_softmax(sim_s, dim=-1).masked_fill(eye, 0.0)
    log_p_t = F.log_softmax(sim_t, dim=-1).masked_fill(eye, 0.0)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


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
        *,
        preset: Literal["default", "paper"] = "default",
        final_weight: float | None = None,
        intermediate_weight: float | None = None,
        intermediate_layers: Sequence[int] | None = None,
        exit_weight: float | None = None,
        exit_layers: Sequence[int] | None = None,
        exit_layer_weights: Sequence[float] | None = None,
        exit_tau: float | None = None,
        exit_slope: float | None = None,
        student_weight: float | None = None,
        student_weight_warmup_steps: int | None = None,
        contrastive_weight: float | None = None,
        contrastive_temperature: float | None = None,
        contrastive_layers: Literal["final", "exit"] | None = None,
        late_weight: float | None = None,
        late_layers: Sequence[int] | None = None,
        redundancy_weight: float | None = None,
        redundancy_layers: Sequence[int] | None = None,
        min_layer: int = 3,
        num_teacher_layers: int | None = None,
        teacher_dim: int | None = None,
    ) -> None:
        """
        LEAP (Layer-wise Exit-Aware Pretraining) loss: trains a sentence-transformers model so that its
        intermediate layers converge to the final embedding, which lets
        ``encode(texts, exit_threshold=...)`` stop most samples before the last layer.

        With ``p_l`` the attention-masked mean of the student's hidden states after layer ``l`` (1-based, the
        quantity the exit rule looks at), ``e`` the student's sentence embedding, ``t`` the teacher's sentence
        embedding, ``t_m`` the teacher's pooled layer ``m``, ``P`` a learned linear projection (only when the
        teacher is wider or narrower than the student, identity otherwise), ``sg`` stop-gradient and
        ``a`` the student weight, the loss is the weighted sum of

        - ``final`` (eq. 3): ``1 - cos(P e, t)``;
        - ``intermediate`` (eq. 4): mean over ``intermediate_layers`` of ``1 - cos(P p_l, t_{m(l)})`` with the
          uniform layer map ``m(l) = round(l * L_t / L_s)``;
        - ``exit`` (eq. 5): weighted mean over ``exit_layers`` of ``(1 - a) sigmoid(s (tau - cos(P p_l, t)))
          + a sigmoid(s (tau - cos(p_l, sg p_L)))``, the dual-target soft margin; ``a`` can ramp from 0 to its
          value over ``student_weight_warmup_steps`` training steps (progressive schedule);
        - ``contrastive`` (eq. 7): KL between the teacher's and the student's row-softmaxed batch cosine
          similarity matrices, diagonal excluded (with the diagonal the KL is ~0 at low temperature), on the
          final embedding and, with ``contrastive_layers="exit"``, on each exit layer too;
        - ``late`` (eq. 8): mean over ``late_layers`` of the linear (non-saturating) dual-target distance
          ``(1 - a)(1 - cos(P p_l, t)) + a (1 - cos(p_l, sg p_L))``;
        - ``redundancy`` (eq. 9): mean over ``redundancy_layers`` of ``1 - cos(p_{l-1}, sg p_l)``: it makes the
          states before a possible exit agree with the next layer's, which is what the adjacent-cosine exit
          rule measures.

        Every term whose weight is 0 is skipped (not computed). ``forward`` returns the weighted terms as a
        dict, so the Trainer logs each one and sums them.

        Args:
            model: The student SentenceTransformer. Its first module must be a ``Transformer`` (or
                ``st_leap.EarlyExitTransformer``); ``output_hidden_states`` is switched on.
            teacher: A live teacher SentenceTransformer, frozen here (eval mode, ``requires_grad=False``, no
                gradients, kept out of the loss's parameters). ``None`` means the teacher embeddings come as
                labels (see Inputs); without labels either, the teacher is the student's own stop-gradient
                final embedding (self-distillation: only the exit/late/redundancy terms then do work).
            preset: ``"default"`` (our measured defaults, docs/training.md) or ``"paper"`` (the paper's values
                as far as they are known to us). Any explicit argument overrides the preset.
            final_weight: Weight of the final-layer distillation term.
            intermediate_weight: Weight of the intermediate-layer distillation (0 by default: with a teacher as
                deep as the student it pulls layer ``l`` back to the teacher's layer ``l``, against exiting).
            intermediate_layers: Student layers (1-based) of the intermediate term; default all but the last.
            exit_weight: Weight of the exit term.
            exit_layers: Student layers (1-based) of the exit term; default ``min_layer .. L-1``.
            exit_layer_weights: One weight ``w_l`` per exit layer (default uniform); normalised to sum to 1.
            exit_tau: Margin tau of the soft margin.
            exit_slope: Slope s of the soft margin (the paper's 10 saturates when layers start far from the
                final one: sigmoid(10 * (0.98 - 0.3)) ~ 0.999, gradient ~ 0.01).
            student_weight: Weight ``a`` of the student-final target in the dual targets (0.7).
            student_weight_warmup_steps: Progressive schedule: ``a`` grows linearly from 0 to
                ``student_weight`` over this many training forward passes (0 = constant).
            contrastive_weight: Weight of the contrastive KL term.
            contrastive_temperature: Temperature of the similarity softmax.
            contrastive_layers: ``"final"`` or ``"exit"`` (final embedding plus every exit layer).
            late_weight: Weight of the late-layer term.
            late_layers: Student layers of the late term; default ``min_layer - 1 .. L-1``.
            redundancy_weight: Weight of the redundancy term.
            redundancy_layers: Layers ``l`` whose predecessor is pulled to them; default ``min_layer .. L``.
            min_layer: The exit rule's l_min, used for the default layer ranges.
            num_teacher_layers: Depth of the teacher when embeddings come as labels (for the layer map);
                read from the live teacher otherwise.
            teacher_dim: Width of the teacher embeddings when they come as labels (creates the projection);
                read from the live teacher otherwise.

        References:
            - Kapadia et al., LEAP: Layer-wise Exit-Aware Pretraining for Efficient Transformer Inference,
              arXiv 2605.01058 (ACL 2026 Industry).
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
            |                                 | (``st_leap.teacher.TeacherEmbeddingCache``)               |
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
                loss = losses.LEAPLoss(model, teacher=teacher)
                args = SentenceTransformerTrainingArguments(output_dir="out", learning_rate=1e-4, warmup_steps=24)
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        if preset not in ("default", "paper"):
            raise ValueError(f"preset must be 'default' or 'paper', got {preset!r}")
        base = dict(DEFAULTS if preset == "default" else PAPER_PRESET)
        given = {
            "final_weight": final_weight,
            "intermediate_weight": intermediate_weight,
            "exit_weight": exit_weight,
            "exit_tau": exit_tau,
            "exit_slope": exit_slope,
            "student_weight": student_weight,
            "student_weight_warmup_steps": student_weight_warmup_steps,
            "contrastive_weight": contrastive_weight,
            "contrastive_temperature": contrastive_temperature,
            "contrastive_layers": contrastive_layers,
            "late_weight": late_weight,
            "redundancy_weight": redundancy_weight,
        }
        base.update({k: v for k, v in given.items() if v is not None})
        self.preset = preset
        for name in (
            "final_weight",
            "intermediate_weight",
            "exit_weight",
            "contrastive_weight",
            "late_weight",
            "redundancy_weight",
        ):
            value = float(base[name])
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {base[name]!r}")
            setattr(self, name, value)
        self.exit_tau = float(base["exit_tau"])
        if not (-1.0 <= self.exit_tau <= 1.0):
            raise ValueError(f"exit_tau must be in [-1, 1], got {base['exit_tau']!r}")
        self.exit_slope = float(base["exit_slope"])
        if not (self.exit_slope > 0 and math.isfinite(self.exit_slope)):
            raise ValueError(f"exit_slope must be a finite number > 0, got {base['exit_slope']!r}")
        self.student_weight = float(base["student_weight"])
        if not (0.0 <= self.student_weight <= 1.0):
            raise ValueError(f"student_weight must be in [0, 1], got {base['student_weight']!r}")
        self.student_weight_warmup_steps = int(base["student_weight_warmup_steps"])
        if self.student_weight_warmup_steps < 0:
            raise ValueError(f"student_weight_warmup_steps must be >= 0, got {base['student_weight_warmup_steps']!r}")
        self.contrastive_temperature = float(base["contrastive_temperature"])
        if not self.contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {base['contrastive_temperature']!r}")
        self.contrastive_layers = base["contrastive_layers"]
        if self.contrastive_layers not in ("final", "exit"):
            raise ValueError(f"contrastive_layers must be 'final' or 'exit', got {self.contrastive_layers!r}")

        self.model = model
        backbone = model[0]
        config = getattr(getattr(backbone, "auto_model", None), "config", None)
        if config is None or not hasattr(config, "num_hidden_layers"):
            raise ValueError(
                f"The first module of the model must be a Transformer with a Hugging Face config, got "
                f"{type(backbone).__name__}"
            )
        config.output_hidden_states = True
        self.num_layers = L = int(config.num_hidden_layers)
        self.student_dim = int(model.get_embedding_dimension())
        self.hidden_dim = int(config.hidden_size)
        if not (isinstance(min_layer, int) and 1 <= min_layer <= L):
            raise ValueError(f"min_layer must be an int in 1..{L}, got {min_layer!r}")
        self.min_layer = min_layer

        def check_layers(name: str, layers: Iterable[int] | None, default: list[int], lo: int) -> list[int]:
            if layers is None:
                return default
            layers = list(layers)
            bad = [x for x in layers if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= L]
            if bad:
                raise ValueError(f"{name} must be ints in {lo}..{L}, got {layers!r}")
            return sorted(set(layers))

        self.intermediate_layers = check_layers("intermediate_layers", intermediate_layers, list(range(1, L)), 1)
        self.exit_layers = check_layers("exit_layers", exit_layers, list(range(min_layer, L)), 1)
        self.late_layers = check_layers("late_layers", late_layers, list(range(max(1, min_layer - 1), L)), 1)
        self.redundancy_layers = check_layers(
            "redundancy_layers", redundancy_layers, list(range(max(2, min_layer), L + 1)), 2
        )
        if exit_layer_weights is None:
            weights = [1.0] * len(self.exit_layers)
        else:
            weights = [float(w) for w in exit_layer_weights]
            if (
                len(weights) != len(self.exit_layers)
                or any(not math.isfinite(w) or w < 0 for w in weights)
                or (weights and sum(weights) <= 0)
            ):
                raise ValueError(
                    f"exit_layer_weights must be {len(self.exit_layers)} finite numbers >= 0 with a positive sum "
                    f"(one per exit layer {self.exit_layers}), got {list(exit_layer_weights)!r}"
                )
        total = sum(weights) or 1.0
        self.exit_layer_weights = [w / total for w in weights]

        # Teacher.
        self._teacher = _FrozenTeacher(teacher) if teacher is not None else None
        self._same_tokenizer = False
        if teacher is not None:
            t_config = teacher[0].auto_model.config
            if self.intermediate_weight > 0:
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

    # ----------------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> SentenceTransformer | None:
        """The live teacher (frozen), or None."""
        return self._teacher.model if self._teacher is not None else None

    def current_student_weight(self) -> float:
        """The student weight ``a`` at the current training step (progressive schedule)."""
        if self.student_weight_warmup_steps <= 0:
            return self.student_weight
        return self.student_weight * min(1.0, float(self._steps.item()) / self.student_weight_warmup_steps)

    def teacher_layers(self) -> list[int]:
        """Teacher layers (1-based) whose pooled states the intermediate term needs, in label order."""
        return [self.layer_map[layer] for layer in self.intermediate_layers]

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        features = list(sentence_features)[0]
        output = self.model(features)
        hidden_states = output.get("all_layer_embeddings")
        if hidden_states is None:
            raise ValueError(
                "The student did not return 'all_layer_embeddings': its first module must be a Transformer with "
                "config.output_hidden_states=True"
            )
        mask = output["attention_mask"]
        pooled = {layer: mean_pool(hidden_states[layer], mask) for layer in range(1, self.num_layers + 1)}
        student_embedding = output["sentence_embedding"]

        teacher_embedding, teacher_pooled = self._teacher_targets(features, labels, student_embedding.device)
        if self.training:
            self._steps += 1
        return self.compute_loss_from_embeddings(student_embedding, pooled, teacher_embedding, teacher_pooled)

    @torch.no_grad()
    def _teacher_targets(
        self, features: dict[str, Tensor], labels: Tensor | None, device: torch.device
    ) -> tuple[Tensor | None, dict[int, Tensor] | None]:
        """Teacher final embedding ``(B, D_t)`` and pooled teacher layers ``{student layer: (B, D_t)}``."""
        if labels is not None and labels.dim() >= 2:
            labels = labels.to(device=device, dtype=torch.float32)
            if labels.dim() == 2:
                if self.intermediate_weight > 0:
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
        if self.intermediate_weight > 0:
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
    ) -> dict[str, Tensor]:
        """The LEAP terms from embeddings only (testable without a model).

        Args:
            student_embedding: The student's sentence embedding ``(B, D_s)``.
            pooled: ``{layer: (B, H)}`` masked-mean hidden states of the student, layers 1..L.
            teacher_embedding: The teacher's sentence embedding ``(B, D_t)``, or None (self-distillation:
                the stop-gradient student final embedding stands in).
            teacher_pooled: ``{student layer: (B, D_t)}`` pooled teacher layers for the intermediate term.

        Returns:
            The weighted terms whose weight is > 0, by name; their sum is the loss.
        """
        L = self.num_layers
        final_state = pooled[L].detach()
        if teacher_embedding is None:
            teacher_embedding = student_embedding.detach()
            project = project_hidden = lambda x: x  # noqa: E731
        else:
            project = self.projection if self.projection is not None else (lambda x: x)
            project_hidden = self.hidden_projection if self.hidden_projection is not None else (lambda x: x)
        a = self.current_student_weight()
        out: dict[str, Tensor] = {}
        if self.final_weight > 0:
            out["final"] = self.final_weight * (1 - _cos(project(student_embedding), teacher_embedding)).mean()
        if self.intermediate_weight > 0:
            if teacher_pooled is None:
                raise ValueError(
                    "intermediate_weight > 0 needs the teacher's per-layer states: a live teacher or per-layer labels"
                )
            terms = [
                (1 - _cos(project_hidden(pooled[layer]), teacher_pooled[layer])).mean()
                for layer in self.intermediate_layers
            ]
            out["intermediate"] = self.intermediate_weight * torch.stack(terms).mean()
        if self.exit_weight > 0 and self.exit_layers:
            terms = []
            for w, layer in zip(self.exit_layer_weights, self.exit_layers, strict=True):
                p = pooled[layer]
                to_teacher = soft_margin(_cos(project_hidden(p), teacher_embedding), self.exit_tau, self.exit_slope)
                to_student = soft_margin(_cos(p, final_state), self.exit_tau, self.exit_slope)
                terms.append(w * ((1 - a) * to_teacher + a * to_student))
            out["exit"] = self.exit_weight * torch.stack(terms).sum()
        if self.contrastive_weight > 0:
            t = self.contrastive_temperature
            terms = [offdiag_similarity_kl(student_embedding, teacher_embedding, t)]
            if self.contrastive_layers == "exit":
                terms += [offdiag_similarity_kl(pooled[layer], teacher_embedding, t) for layer in self.exit_layers]
            out["contrastive"] = self.contrastive_weight * torch.stack(terms).mean()
        if self.late_weight > 0 and self.late_layers:
            terms = []
            for layer in self.late_layers:
                p = pooled[layer]
                terms.append(
                    (1 - a) * (1 - _cos(project_hidden(p), teacher_embedding)).mean()
                    + a * (1 - _cos(p, final_state)).mean()
                )
            out["late"] = self.late_weight * torch.stack(terms).mean()
        if self.redundancy_weight > 0 and self.redundancy_layers:
            terms = [(1 - _cos(pooled[layer - 1], pooled[layer].detach())).mean() for layer in self.redundancy_layers]
            out["redundancy"] = self.redundancy_weight * torch.stack(terms).mean()
        if not out:
            raise ValueError("Every LEAPLoss term has weight 0: nothing to train")
        return out

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "final_weight": self.final_weight,
            "intermediate_weight": self.intermediate_weight,
            "intermediate_layers": self.intermediate_layers,
            "exit_weight": self.exit_weight,
            "exit_layers": self.exit_layers,
            "exit_layer_weights": self.exit_layer_weights,
            "exit_tau": self.exit_tau,
            "exit_slope": self.exit_slope,
            "student_weight": self.student_weight,
            "student_weight_warmup_steps": self.student_weight_warmup_steps,
            "contrastive_weight": self.contrastive_weight,
            "contrastive_temperature": self.contrastive_temperature,
            "contrastive_layers": self.contrastive_layers,
            "late_weight": self.late_weight,
            "late_layers": self.late_layers,
            "redundancy_weight": self.redundancy_weight,
            "redundancy_layers": self.redundancy_layers,
            "min_layer": self.min_layer,
            "teacher": "live" if self._teacher is not None else "labels or self",
        }

    @property
    def citation(self) -> str:
        return """
@inproceedings{kapadia2026leap,
    title={LEAP: Layer-wise Exit-Aware Pretraining for Efficient Transformer Inference},
    author={Kapadia and others},
    booktitle={Proceedings of the 64th Annual Meeting of the Association for Computational Linguistics: Industry Track},
    year={2026},
    eprint={2605.01058},
    archivePrefix={arXiv},
}
"""


_TOKEN_KEYS = {"input_ids", "attention_mask", "token_type_ids"}


def _same_vocab(a: SentenceTransformer, b: SentenceTransformer) -> bool:
    ta, tb = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    if ta is None or tb is None:
        return False
    try:
        return type(ta).__name__ == type(tb).__name__ and ta.get_vocab() == tb.get_vocab()
    except Exception:  # noqa: BLE001 - tokenizers without get_vocab: re-tokenize to be safe
        return False
