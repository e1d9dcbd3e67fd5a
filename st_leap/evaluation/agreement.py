from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from sentence_transformers.util import pairwise_cos_sim

from st_leap.model import MODEL_DEFAULT, early_exit_module, encode_with_exits, exit_kwargs, last_call_stats

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class TeacherAgreementEvaluator(SentenceEvaluator):
    """How close the model's embeddings stay to a reference model's on held-out texts, at the model's exit setting.

    This is a retrieval-free dev signal for search (ours). When an index was built with a reference model
    (typically the original one), a query embedding is only useful if it lands where the reference would put
    that query. The evaluator encodes ``texts`` with the model (with ``task``, so per-role exit settings apply,
    and with any exit settings given here). It reports the mean cosine to the reference's embeddings of the same
    texts, their 10th percentile (the texts that moved most), E[layers] and the exit rate. No relevance labels and
    no test set are needed: held-out training-distribution sentences and passages are enough.

    The primary metric is ``cosine_mean``, so it works as a ``SentenceTransformerTrainer`` evaluator
    (``metric_for_best_model="eval_<name>_cosine_mean"``).

    Args:
        texts: Held-out texts (for search: short query-like sentences and passages at serving length).
        reference_embeddings: The reference model's embeddings of ``texts``, shape ``(len(texts), D)``.
        reference: Or a SentenceTransformer that embeds ``texts`` once, here, with ``reference_task``.
        task: sentence-transformers' ``task`` for the evaluated model (``"query"``, ``"document"`` or None):
            the role whose exit settings apply.
        reference_task: ``task`` for the reference model. Defaults to ``task``.
        exit_threshold, exit_patience, exit_min_layer, truncate_layers: Exit settings for ``encode``. Left out,
            the model's saved defaults for the role apply.
        name: Prefix of the metrics.
        batch_size: Encode batch size.
        show_progress_bar: Passed to ``encode``.

    Example:
        ::

            import st_leap
            from sentence_transformers import SentenceTransformer
            from st_leap.evaluation import TeacherAgreementEvaluator
            from st_leap.resources import load_passages, load_sentences, minilm_path

            original = SentenceTransformer(minilm_path())
            texts = load_sentences(500, seed=7) + load_passages(100, seed=7)
            evaluator = TeacherAgreementEvaluator(texts, reference=original, task="query", exit_threshold=0.95,
                                                  name="held-out")
            model = st_leap.from_pretrained("runs/my-leap-model")
            print(evaluator(model))  # {'held-out_cosine_mean': ..., 'held-out_expected_layers': ..., ...}
    """

    def __init__(
        self,
        texts: list[str],
        reference_embeddings: np.ndarray | None = None,
        *,
        reference: SentenceTransformer | None = None,
        task: str | None = None,
        reference_task: str | None = MODEL_DEFAULT,
        exit_threshold: float | None | Any = MODEL_DEFAULT,
        exit_patience: int | Any = MODEL_DEFAULT,
        exit_min_layer: int | None | Any = MODEL_DEFAULT,
        truncate_layers: int | None | Any = MODEL_DEFAULT,
        name: str = "",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        if (reference_embeddings is None) == (reference is None):
            raise ValueError("Give exactly one of reference_embeddings and reference")
        if reference_task is MODEL_DEFAULT:
            reference_task = task
        if reference is not None:
            reference_embeddings = reference.encode(
                list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True,
                **({"task": reference_task} if reference_task is not None else {}),
            )
        reference_embeddings = np.asarray(reference_embeddings, dtype=np.float32)
        if reference_embeddings.ndim != 2 or reference_embeddings.shape[0] != len(texts):
            raise ValueError(
                f"reference_embeddings must have shape (len(texts), D) = ({len(texts)}, D), "
                f"got {reference_embeddings.shape}"
            )
        self.texts = list(texts)
        self.reference = reference_embeddings
        self.task = task
        self.exit_settings = exit_kwargs(exit_threshold, exit_patience, exit_min_layer, truncate_layers)
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.primary_metric = "cosine_mean"

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        if early_exit_module(model) is not None:
            result = encode_with_exits(
                model, self.texts, task=self.task, batch_size=self.batch_size,
                show_progress_bar=self.show_progress_bar, **self.exit_settings,
            )
            embeddings, stats = np.asarray(result.embeddings, dtype=np.float32), result.stats
        else:  # a plain sentence-transformers model (e.g. a baseline, or before conversion): full depth
            embeddings = model.encode(
                self.texts, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                convert_to_numpy=True, **({"task": self.task} if self.task is not None else {}),
            )
            stats = last_call_stats(model, len(self.texts))
        if embeddings.shape != self.reference.shape:
            raise ValueError(
                f"The model embeds to {embeddings.shape[1:]}, the reference to {self.reference.shape[1:]}: agreement "
                "needs embeddings of the same space"
            )
        cosine = pairwise_cos_sim(embeddings, self.reference).numpy()
        metrics = {
            "cosine_mean": float(cosine.mean()),
            "cosine_p10": float(np.percentile(cosine, 10)),
            "expected_layers": stats.expected_layers,
            "exit_rate": stats.exit_rate,
        }
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    @property
    def description(self) -> str:
        return "Agreement with a reference model"

    def get_config_dict(self) -> dict[str, Any]:
        return {"task": self.task, **self.exit_settings}
