from __future__ import annotations

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

        References:
            - Henderson et al., Efficient Natural Language Response Suggestion for Smart Reply (in-batch
              negatives), https://arxiv.org/abs/1705.00652
            - Lee et al., Latent Retrieval for Weakly Supervised Open Domain Question Answering (sentence-to-passage
              pairs, the inverse cloze task), https://arxiv.org/abs/1906.00300

        Requirements:
            1. A model whose first module is a ``Transformer`` (``output_hidden_states`` is switched on here), usually
               an early-exit model (:func:`st_leap.from_pretrained`).
            2. The index model's embedding of each query's document, as the label.

        Inputs:
            +----------------------------+--------------------------------------------------------------+
            | Texts                      | Labels                                                       |
            +============================+==============================================================+
            | (query)                    | the index model's embedding of the query's document (B, D)   |
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
        if labels is None or labels.dim() != 2:
            raise ValueError(
                "QueryRetrievalLoss needs the index model's document embedding of each query as labels, shape "
                f"(batch, dim); got {None if labels is None else tuple(labels.shape)}"
            )
        embeddings = self.layer_embeddings(features)
        documents = F.normalize(labels.to(dtype=torch.float32), dim=-1)
        first = next(iter(embeddings.values()))
        documents = documents.to(first.device)
        if documents.shape[1] != first.shape[1]:
            raise ValueError(
                f"Document embeddings have width {documents.shape[1]}, the model's embeddings {first.shape[1]}"
            )
        target = torch.arange(len(documents), device=documents.device)
        same = documents @ documents.T > 1 - 1e-6
        duplicate = same & ~torch.eye(len(documents), dtype=torch.bool, device=documents.device)
        terms = []
        for embedding in embeddings.values():
            scores = self.scale * F.normalize(embedding, dim=-1) @ documents.T
            terms.append(F.cross_entropy(scores.masked_fill(duplicate, float("-inf")), target))
        return torch.stack(terms).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "scale": self.scale, "use_exit_maps": self.use_exit_maps}

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
