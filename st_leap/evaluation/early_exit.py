from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)

from st_leap.exit_policy import ExitStats
from st_leap.model import MODEL_DEFAULT, exit_kwargs, last_call_stats

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class _ExitAware:
    """Mixin: passes the exit settings through ``embed_inputs`` and adds E[layers] and exit rate to the metrics."""

    exit_settings: dict[str, Any]
    _exit_counter: ExitStats

    def _init_exit(
        self, exit_threshold: Any, exit_patience: Any, exit_min_layer: Any, truncate_layers: Any = MODEL_DEFAULT
    ) -> None:
        self.exit_settings = exit_kwargs(exit_threshold, exit_patience, exit_min_layer, truncate_layers)
        self._exit_counter = ExitStats()

    def embed_inputs(self, model: SentenceTransformer, sentences: Any, **kwargs: Any) -> Any:
        embeddings = super().embed_inputs(model, sentences, **{**self.exit_settings, **kwargs})  # type: ignore[misc]
        self._exit_counter.merge(last_call_stats(model, len(sentences)))
        return embeddings

    def _exit_metrics(self) -> dict[str, float]:
        counter = self._exit_counter
        return {
            "expected_layers": counter.expected_layers,
            "exit_rate": counter.exit_rate,
            "layer_reduction": counter.layer_reduction,
        }

    @property
    def exit_stats(self) -> dict[str, Any]:
        """Exit-layer counts, E[layers], exit rate and layer reduction of the last evaluation."""
        return self._exit_counter.to_dict()

    def _call_with_exit(self, parent_call: Any, model: SentenceTransformer, *args: Any, **kwargs: Any) -> dict:
        self._exit_counter = ExitStats()
        metrics = parent_call(model, *args, **kwargs)
        extra = self.prefix_name_to_metrics(self._exit_metrics(), self.name)  # type: ignore[attr-defined]
        metrics.update(extra)
        self.store_metrics_in_model_card_data(model, extra, kwargs.get("epoch", -1), kwargs.get("steps", -1))  # type: ignore[attr-defined]
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()  # type: ignore[misc]
        config.update(self.exit_settings)
        return config


class EarlyExitEmbeddingSimilarityEvaluator(_ExitAware, EmbeddingSimilarityEvaluator):
    """``EmbeddingSimilarityEvaluator`` that encodes with a given exit setting and reports its cost.

    Besides the usual Pearson/Spearman metrics it returns ``expected_layers`` (E[layers], the mean number of layers
    run per text), ``exit_rate`` (fraction of texts that stopped before the last layer) and ``layer_reduction``
    (``L / E[layers]``), all prefixed with ``name`` like the other metrics. The primary metric is unchanged
    (cosine Spearman by default), so it works as a training evaluator.

    Args:
        sentences1: First sentences of the pairs.
        sentences2: Second sentences of the pairs.
        scores: Gold similarity of each pair.
        exit_threshold: theta passed to ``encode``; ``None`` runs full depth. Left out, the model's saved default
            is used.
        exit_patience: k passed to ``encode``; left out, the model's default.
        exit_min_layer: l_min passed to ``encode``; left out, the model's default.
        truncate_layers: static depth passed to ``encode``; left out, the model's default.
        **kwargs: Every other ``EmbeddingSimilarityEvaluator`` argument (``batch_size``, ``name``,
            ``main_similarity``...).

    Example:
        ::

            import st_leap
            from st_leap.evaluation import EarlyExitEmbeddingSimilarityEvaluator
            from st_leap.resources import load_stsb, minilm_path

            model = st_leap.from_pretrained(minilm_path())
            s1, s2, scores = load_stsb("dev")
            evaluator = EarlyExitEmbeddingSimilarityEvaluator(s1, s2, scores, exit_threshold=0.95, name="sts-dev")
            print(evaluator(model))  # {'sts-dev_spearman_cosine': ..., 'sts-dev_expected_layers': ..., ...}
    """

    def __init__(
        self,
        sentences1: list[str],
        sentences2: list[str],
        scores: list[float],
        *,
        exit_threshold: float | None | Any = MODEL_DEFAULT,
        exit_patience: int | Any = MODEL_DEFAULT,
        exit_min_layer: int | None | Any = MODEL_DEFAULT,
        truncate_layers: int | None | Any = MODEL_DEFAULT,
        **kwargs: Any,
    ) -> None:
        super().__init__(sentences1, sentences2, scores, **kwargs)
        self._init_exit(exit_threshold, exit_patience, exit_min_layer, truncate_layers)

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        return self._call_with_exit(super().__call__, model, output_path=output_path, epoch=epoch, steps=steps)


class EarlyExitInformationRetrievalEvaluator(_ExitAware, InformationRetrievalEvaluator):
    """``InformationRetrievalEvaluator`` that encodes queries and corpus with a given exit setting.

    Adds ``expected_layers``, ``exit_rate`` and ``layer_reduction`` over all encoded texts (queries and documents)
    to the usual retrieval metrics; the primary metric is unchanged (NDCG@max k).

    Args:
        queries: ``qid -> query text``.
        corpus: ``cid -> document text``.
        relevant_docs: ``qid -> set of relevant cids``.
        exit_threshold: theta passed to ``encode``; ``None`` runs full depth. Left out, the model's saved default.
        exit_patience: k passed to ``encode``; left out, the model's default.
        exit_min_layer: l_min passed to ``encode``; left out, the model's default.
        truncate_layers: static depth passed to ``encode``; left out, the model's default.
        **kwargs: Every other ``InformationRetrievalEvaluator`` argument (``ndcg_at_k``, ``batch_size``, ``name``...).
    """

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        *,
        exit_threshold: float | None | Any = MODEL_DEFAULT,
        exit_patience: int | Any = MODEL_DEFAULT,
        exit_min_layer: int | None | Any = MODEL_DEFAULT,
        truncate_layers: int | None | Any = MODEL_DEFAULT,
        **kwargs: Any,
    ) -> None:
        super().__init__(queries, corpus, relevant_docs, **kwargs)
        self._init_exit(exit_threshold, exit_patience, exit_min_layer, truncate_layers)

    def __call__(
        self,
        model: SentenceTransformer,
        output_path: str | None = None,
        epoch: int = -1,
        steps: int = -1,
        **kwargs: Any,
    ) -> dict[str, float]:
        return self._call_with_exit(
            super().__call__, model, output_path=output_path, epoch=epoch, steps=steps, **kwargs
        )
