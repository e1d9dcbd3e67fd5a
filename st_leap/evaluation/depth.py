"""Queries at each static depth against an index built by another model (the "keep your index" dev signal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SentenceEvaluator
from sentence_transformers.util import cos_sim, pairwise_cos_sim

from st_leap.model import num_layers

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class _EncodeKwargsIR(InformationRetrievalEvaluator):
    """``InformationRetrievalEvaluator`` whose query encoding takes extra ``encode`` kwargs (a static depth)."""

    encode_kwargs: dict[str, Any] = {}

    def embed_inputs(self, model: SentenceTransformer, sentences: Any, **kwargs: Any) -> Any:
        return super().embed_inputs(model, sentences, **{**self.encode_kwargs, **kwargs})


class QueryDepthEvaluator(SentenceEvaluator):
    """Retrieval quality of queries cut at each depth, against documents embedded once by a reference model.

    This is the dev signal of a query-side retrofit (ours, not the paper's): the index was built by the reference
    (typically the original model at full depth) and stays as it is; only queries are encoded by the evaluated model,
    at a static depth ``d`` (``encode_query(..., truncate_layers=d)``, through the model's exit maps when it has
    them). For each depth it reports NDCG@``k`` (sentence-transformers' ``InformationRetrievalEvaluator`` on the
    reference's document embeddings) and the mean cosine of the queries to the reference's own query embeddings.
    The reference's score is reported as ``reference_ndcg@k``: the ceiling of a query encoder for this index.

    Args:
        queries: ``qid -> query text`` (held-out, never a test split).
        corpus: ``cid -> document text``.
        relevant_docs: ``qid -> set of relevant cids``.
        reference: The index's model; it embeds the corpus (``encode_document``) and the queries (``encode_query``)
            once, here.
        corpus_embeddings: The index's document embeddings ``(len(corpus), D)``, rows in ``corpus`` order, when you
            already have them (your index); the reference then embeds only the queries.
        depths: Static depths to score (1-based). Defaults to every layer of the evaluated model.
        primary_depth: The depth whose NDCG@k is the primary metric (for ``metric_for_best_model``). Defaults to the
            smallest of ``depths``.
        ndcg_at_k: The cut-off of NDCG.
        name: Prefix of the metrics.
        batch_size: Encode batch size.
        show_progress_bar: Passed to ``encode``.

    Example:
        ::

            import st_leap
            from sentence_transformers import SentenceTransformer
            from st_leap.evaluation import QueryDepthEvaluator
            from st_leap.resources import cloze_retrieval_dev, minilm_path

            original = SentenceTransformer(minilm_path())
            queries, corpus, relevant = cloze_retrieval_dev(500, 2000)
            evaluator = QueryDepthEvaluator(queries, corpus, relevant, reference=original, depths=[2, 3, 4, 5, 6])
            print(evaluator(st_leap.from_pretrained("runs/query/leap")))  # {'depth3_ndcg@10': ..., ...}
    """

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        *,
        reference: SentenceTransformer,
        corpus_embeddings: Any = None,
        depths: Sequence[int] | None = None,
        primary_depth: int | None = None,
        ndcg_at_k: int = 10,
        name: str = "",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        super().__init__()
        if not queries or not corpus:
            raise ValueError("QueryDepthEvaluator needs at least one query and one document")
        if depths is not None:
            depths = sorted({int(d) for d in depths})
            if not depths or depths[0] < 1:
                raise ValueError(f"depths must be layers >= 1, got {depths!r}")
        if primary_depth is not None and depths is not None and primary_depth not in depths:
            raise ValueError(f"primary_depth {primary_depth} is not one of depths {depths}")
        self.depths = depths
        self.primary_depth = primary_depth
        self.k = int(ndcg_at_k)
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.queries = dict(queries)
        self.ir = _EncodeKwargsIR(
            queries, corpus, relevant_docs, ndcg_at_k=[self.k], mrr_at_k=[self.k], accuracy_at_k=[1, self.k],
            precision_recall_at_k=[self.k], map_at_k=[self.k], batch_size=batch_size,
            show_progress_bar=bool(show_progress_bar), name=name, score_functions={"cosine": cos_sim},
        )
        common = {"batch_size": batch_size, "show_progress_bar": show_progress_bar, "convert_to_tensor": True}
        if corpus_embeddings is None:
            self.corpus_embeddings = reference.encode_document(self.ir.corpus, **common).cpu()
        else:
            self.corpus_embeddings = torch.as_tensor(corpus_embeddings, dtype=torch.float32).cpu()
            if self.corpus_embeddings.dim() != 2 or len(self.corpus_embeddings) != len(self.ir.corpus):
                raise ValueError(
                    f"corpus_embeddings must have one row per document ({len(self.ir.corpus)}), got shape "
                    f"{tuple(self.corpus_embeddings.shape)}"
                )
        self.reference_queries = reference.encode_query(self.ir.queries, **common).cpu()
        self.reference_ndcg = self.ndcg(reference)

    def ndcg(self, model: SentenceTransformer, **encode_kwargs: Any) -> float:
        """NDCG@k of ``model``'s queries (``encode_query(**encode_kwargs)``) against the reference's documents."""
        self.ir.encode_kwargs = encode_kwargs
        try:
            scores = self.ir.compute_all_metrics(model, corpus_embeddings=self.corpus_embeddings)
        finally:
            self.ir.encode_kwargs = {}
        return float(max(values["ndcg@k"][self.k] for values in scores.values()))

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        depth_count = num_layers(model)
        if depth_count is None:
            raise ValueError("QueryDepthEvaluator needs a model whose first module is a Transformer with layers")
        depths = self.depths or list(range(1, depth_count + 1))
        if depths[-1] > depth_count:
            raise ValueError(f"depths {depths} go beyond the model's {depth_count} layers")
        metrics: dict[str, float] = {f"reference_ndcg@{self.k}": self.reference_ndcg}
        for depth in depths:
            cut = {"truncate_layers": depth, "exit_threshold": None}
            metrics[f"depth{depth}_ndcg@{self.k}"] = self.ndcg(model, **cut)
            queries = model.encode_query(
                self.ir.queries, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                convert_to_tensor=True, **cut,
            ).cpu()
            if queries.shape != self.reference_queries.shape:
                raise ValueError(
                    f"The model embeds to {tuple(queries.shape[1:])}, the reference to "
                    f"{tuple(self.reference_queries.shape[1:])}: fit exit maps into the reference's space first"
                )
            metrics[f"depth{depth}_cosine"] = float(pairwise_cos_sim(queries, self.reference_queries).mean())
        primary = self.primary_depth or depths[0]
        self.primary_metric = f"depth{primary}_ndcg@{self.k}"
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    @property
    def description(self) -> str:
        return "Queries at each depth against a reference model's index"

    def get_config_dict(self) -> dict[str, Any]:
        return {"depths": self.depths, "ndcg_at_k": self.k}
