from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from st_leap.exit_maps import exit_maps_module, mapped_layer_embeddings
from st_leap.losses.leap import enable_hidden_states, forward_all_layers


class QueryRetrievalLoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        layers: Sequence[int] | None = None,
        scale: float = 20.0,
        use_exit_maps: bool | None = None,
        hard_negatives: int = 0,
        soft_weight: float = 0.0,
        soft_scale: float = 20.0,
        weight: float = 1.0,
    ) -> None:
        """Trains a query encoder at every depth to retrieve the right document from an index that stays: each
        query's layer-``l`` embedding (through its exit map, if the model has them) is scored against the fixed
        document embeddings of the batch, and the loss is the cross-entropy of picking its own document (in-batch
        negatives, as in :class:`~sentence_transformers.sentence_transformer.losses.MultipleNegativesRankingLoss`),
        averaged over ``layers``.

        The documents are never encoded by the model being trained: their embeddings come as labels, computed once
        by the model that built the index (for example with :func:`st_leap.teacher.compute_teacher_embeddings`). A
        query stopped at layer ``l`` is thus trained to rank the index's documents the way the index expects. Rows
        whose documents are the same (two sentences of one passage in a batch) are not counted as each other's
        negatives.

        This loss is st_leap's own, not the LEAP paper's. It is meant to run beside :class:`~st_leap.losses.LEAPLoss`
        (which keeps each layer close to the index model's embedding of the same query) as a second dataset and
        loss of one ``SentenceTransformerTrainer``; ``st-leap train`` does this with a config's ``retrieval`` key.

        Args:
            model: The query encoder (an early-exit model that returns ``all_layer_embeddings``).
            layers: 1-based layers to train (default: every layer). Layer ``L`` is the model's own output.
            scale: Inverse temperature of the cosine scores (20, as sentence-transformers' in-batch losses).
            use_exit_maps: Read each layer below ``L`` through the model's exit maps (:mod:`st_leap.exit_maps`),
                which then train with the encoder. Default: if the model has maps.
            hard_negatives: How many hard-negative documents each label holds after the query's own (default 0:
                labels ``(B, D)`` or ``(B, 1, D)``, in-batch negatives only).
            soft_weight: Weight of the KL term toward the index model's scores (default 0: off). Above 0, the label's
                last row is the index model's embedding of the query text.
            soft_scale: Inverse temperature of the index model's scores in the soft target (default 20).
            weight: Multiplies the whole loss (cross-entropy plus the soft term; default 1), to weigh it against
                the other losses of a multi-dataset run.

        References:
            - Henderson et al., Efficient Natural Language Response Suggestion for Smart Reply (in-batch
              negatives), https://arxiv.org/abs/1705.00652
            - Lee et al., Latent Retrieval for Weakly Supervised Open Domain Question Answering (sentence-to-passage
              pairs, the inverse cloze task), https://arxiv.org/abs/1906.00300
            - Ren et al., RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage Re-ranking
              (listwise KL distillation of a teacher's score distribution), https://arxiv.org/abs/2110.07367
            - Hofstätter et al., Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
              Distillation (margin-MSE), https://arxiv.org/abs/2010.02666

        Requirements:
            1. A model whose first module is a ``Transformer`` (``output_hidden_states`` is switched on here), usually
               an early-exit model (:func:`st_leap.from_pretrained`).
            2. The index model's embedding of each query's document, as the label (with ``hard_negatives`` or
               ``soft_weight``: the rows described below).

        Inputs:
            +----------------------------+--------------------------------------------------------------+
            | Texts                      | Labels                                                       |
            +============================+==============================================================+
            | (query)                    | the index model's embedding of the query's document (B, D)   |
            +----------------------------+--------------------------------------------------------------+
            | (query)                    | (B, R, D): its document, ``hard_negatives`` documents, and   |
            |                            | (``soft_weight > 0``) the index model's embedding of the     |
            |                            | query; ``R = 1 + hard_negatives + (soft_weight > 0)``        |
            +----------------------------+--------------------------------------------------------------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                import st_leap
                from st_leap.losses import QueryRetrievalLoss

                index_model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                queries = ["what is a kidney stone", "who wrote hamlet"]
                documents = ["Kidney stones are hard deposits ...", "Hamlet is a tragedy by Shakespeare ..."]
                dataset = Dataset.from_dict(
                    {"query": queries, "label": index_model.encode(documents).tolist()}
                )
                model = st_leap.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
                loss = QueryRetrievalLoss(model, layers=[2, 3, 4, 5, 6])
                trainer = SentenceTransformerTrainer(model=model, train_dataset=dataset, loss=loss)
                trainer.train()
        """
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a number > 0, got {scale!r}")
        self.model = model
        self.num_layers = int(enable_hidden_states(model).num_hidden_layers)
        L = self.num_layers
        self.layers = list(range(1, L + 1)) if layers is None else sorted(set(layers))
        bad = [x for x in self.layers if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= L]
        if bad or not self.layers:
            raise ValueError(f"layers must be a non-empty list of ints in 1..{L}, got {layers!r}")
        self.scale = float(scale)
        maps = exit_maps_module(model)
        if use_exit_maps and maps is None:
            raise ValueError(
                "use_exit_maps=True needs a model with exit maps: fit them first (st_leap.fit_exit_maps or "
                "st-leap fit-maps)"
            )
        self.use_exit_maps = maps is not None if use_exit_maps is None else bool(use_exit_maps)
        if isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int) or hard_negatives < 0:
            raise ValueError(f"hard_negatives must be an int >= 0, got {hard_negatives!r}")
        for name, value, low in (("soft_weight", soft_weight, 0.0), ("soft_scale", soft_scale, None),
                                 ("weight", weight, None)):
            if (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (value < low if low is not None else not value > 0)
            ):
                bound = ">= 0" if low is not None else "> 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        self.hard_negatives = hard_negatives
        self.soft_weight = float(soft_weight)
        self.soft_scale = float(soft_scale)
        self.weight = float(weight)

    @property
    def label_rows(self) -> int:
        """``R``: the rows of each label, the own document, the hard negatives and (with ``soft_weight``) the
        index model's embedding of the query."""
        return 1 + self.hard_negatives + (1 if self.soft_weight > 0 else 0)

    def layer_embeddings(self, features: dict[str, Tensor]) -> dict[int, Tensor]:
        """``{layer: (B, D)}`` the query embedding at each trained layer (mapped where maps are used)."""
        output, hidden_states = forward_all_layers(self.model, features)
        maps = exit_maps_module(self.model) if self.use_exit_maps else None
        below = [layer for layer in self.layers if layer < self.num_layers]
        out = mapped_layer_embeddings(self.model, hidden_states, output["attention_mask"], below, maps)
        if self.num_layers in self.layers:
            out[self.num_layers] = output["sentence_embedding"]  # the model's own output, as encode serves it
        return out

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)[0]
        self._check_labels(labels)
        return self.compute_loss_from_embeddings(self.layer_embeddings(features), labels)

    def _check_labels(self, labels: Tensor | None) -> None:
        R = self.label_rows
        shape = None if labels is None else tuple(labels.shape)
        if labels is None or labels.dim() not in (2, 3) or (labels.dim() == 2 and R != 1) or (
            labels.dim() == 3 and labels.shape[1] != R
        ):
            expected = "(batch, dim) or (batch, 1, dim)" if R == 1 else f"(batch, {R}, dim)"
            rows = (
                "" if R == 1 else f": the own document, {self.hard_negatives} hard negatives"
                + (" and the index model's embedding of the query" if self.soft_weight > 0 else "")
            )
            raise ValueError(
                f"QueryRetrievalLoss needs the index model's document embedding of each query as labels, shape "
                f"{expected}{rows} (hard_negatives={self.hard_negatives}, soft_weight={self.soft_weight}); "
                f"got {shape}"
            )

    def compute_loss_from_embeddings(self, embeddings: dict[int, Tensor], labels: Tensor) -> Tensor:
        """The loss from the query embedding at each trained layer (``{layer: (B, D)}``) and the labels (see
        ``Inputs``): the mean over layers of the cross-entropy (plus ``soft_weight`` times the KL term), times
        ``weight``."""
        self._check_labels(labels)
        first = next(iter(embeddings.values()))
        labels = F.normalize(labels.to(device=first.device, dtype=torch.float32), dim=-1)
        if labels.shape[-1] != first.shape[1]:
            raise ValueError(
                f"Document embeddings have width {labels.shape[-1]}, the model's embeddings {first.shape[1]}"
            )
        if labels.dim() == 2:
            labels = labels[:, None]
        B, k = len(labels), self.hard_negatives
        documents = labels[:, 0]
        # The candidates: every own document of the batch, then every hard negative (row-major).
        candidates = documents if k == 0 else torch.cat([documents, labels[:, 1 : 1 + k].reshape(B * k, -1)])
        target = torch.arange(B, device=documents.device)
        same = documents @ candidates.T > 1 - 1e-6
        own = torch.zeros_like(same)
        own[target, target] = True
        duplicate = same & ~own  # a copy of a row's own document is not its negative
        teacher = None
        if self.soft_weight > 0:
            scores = self.soft_scale * labels[:, -1] @ candidates.T
            teacher = torch.log_softmax(scores.masked_fill(duplicate, float("-inf")), dim=-1)
        terms = []
        for embedding in embeddings.values():
            scores = self.scale * F.normalize(embedding, dim=-1) @ candidates.T
            scores = scores.masked_fill(duplicate, float("-inf"))
            term = F.cross_entropy(scores, target)
            if teacher is not None:
                student = torch.log_softmax(scores, dim=-1)
                # KL(teacher || student) over the unmasked candidates (masked ones carry no probability)
                kl = teacher.exp() * (teacher - student).masked_fill(duplicate, 0.0)
                term = term + self.soft_weight * kl.sum(dim=-1).mean()
            terms.append(term)
        loss = torch.stack(terms).mean()
        return loss if self.weight == 1.0 else self.weight * loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers, "scale": self.scale, "use_exit_maps": self.use_exit_maps,
            "hard_negatives": self.hard_negatives, "soft_weight": self.soft_weight, "soft_scale": self.soft_scale,
            "weight": self.weight,
        }

    @property
    def citation(self) -> str:
        return """
@misc{henderson2017efficient,
    title={Efficient Natural Language Response Suggestion for Smart Reply},
    author={Matthew Henderson and Rami Al-Rfou and Brian Strope and Yun-hsuan Sung and Laszlo Lukacs and Ruiqi Guo
        and Sanjiv Kumar and Balint Miklos and Ray Kurzweil},
    year={2017},
    eprint={1705.00652},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}
"""
