"""The dev signals of a training run, built from its :class:`~st_leap.training.TrainConfig` (the config layer builds
evaluators; :func:`st_leap.training.train` takes them as an argument)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator, SequentialEvaluator

from st_leap import resources

if TYPE_CHECKING:
    from st_leap.training import TrainConfig


class _AtServingLength(SequentialEvaluator):
    """Runs its evaluators with the model at its serving ``max_seq_length`` (training may truncate shorter)."""

    def __init__(self, evaluators: Sequence[SentenceEvaluator], max_seq_length: int | None) -> None:
        super().__init__(evaluators, main_score_function=lambda scores: scores[0])
        self.max_seq_length = max_seq_length

    def __call__(self, model: SentenceTransformer, *args: Any, **kwargs: Any) -> dict[str, float]:
        training_length = model.max_seq_length
        model.max_seq_length = self.max_seq_length or training_length
        try:
            return super().__call__(model, *args, **kwargs)
        finally:
            model.max_seq_length = training_length


def dev_evaluator(config: TrainConfig, max_seq_length: int | None = None) -> SentenceEvaluator:
    """The dev signals of a run with ``eval_steps`` (no test set involved), at the config's exit settings:

    - ``cloze-dev``: NDCG@10, MRR@10, recall and the exit rate / E[layers] on
      :func:`~st_leap.resources.cloze_retrieval_dev` (queries through ``encode_query``, documents through
      ``encode_document``, so per-role exit settings apply); its NDCG@10 is the primary score;
    - ``agreement-queries`` / ``agreement-documents``: mean cosine to the reference model's embeddings of the dev
      queries (``task="query"``) and of as many dev documents (``task="document"``): whether an index built with
      the reference still fits. The reference is the teacher, else the starting model.

    With ``dev_depths`` (a query-side retrofit) the dev signal is instead
    :class:`~st_leap.evaluation.QueryDepthEvaluator`: the dev queries cut at each of those depths against the
    reference's own embeddings of the dev documents (the index stays the reference's), NDCG@10 and cosine to the
    reference's query embeddings per depth.

    With ``corpus`` (a query encoder for your own index) it is :func:`corpus_depth_evaluator`: texts of the
    corpus's held-out documents retrieving their own documents from the whole index.

    Every evaluator runs at ``max_seq_length`` (the serving length), whatever length training truncates to; ``None``
    lets :func:`st_leap.training.train` fill in the student's own.
    """
    from st_leap.evaluation.agreement import TeacherAgreementEvaluator
    from st_leap.evaluation.depth import QueryDepthEvaluator
    from st_leap.evaluation.early_exit import EarlyExitInformationRetrievalEvaluator

    if config.corpus is not None:
        # A query encoder for your own index: held-out documents' texts against the whole index.
        reference = SentenceTransformer(resources.resolve_model(config.teacher or config.model))
        depth = corpus_depth_evaluator(
            config.corpus["path"], reference, config.dev_depths, dev_documents=config.corpus.get("dev_documents", 200),
            seed=config.sentence_seed, num_queries=config.dev_queries,
            document_embeddings=config.corpus.get("document_embeddings"), batch_size=config.batch_size,
        )
        return _AtServingLength([depth], max_seq_length)
    queries, corpus, relevant = resources.cloze_retrieval_dev(
        config.dev_queries, config.dev_documents, seed=config.sentence_seed,
        sentences_per_passage=max(2, config.sentences_per_passage),
    )
    # Its own copy, on purpose: the teacher train() holds runs at the training length and is freed once its
    # embeddings are cached, and without a teacher the reference is the starting model, which training changes.
    reference = SentenceTransformer(resources.resolve_model(config.teacher or config.model))
    if max_seq_length is not None:  # else the reference keeps its own serving length
        reference.max_seq_length = max_seq_length
    common = {"batch_size": config.batch_size, "show_progress_bar": False}
    if config.dev_depths is not None:
        # A query encoder for an index the reference built: queries at each depth against the reference's documents.
        depth = QueryDepthEvaluator(
            queries, corpus, relevant, reference=reference, depths=config.dev_depths, name="depth-dev", **common
        )
        return _AtServingLength([depth], max_seq_length)
    exits = {"exit_threshold": config.exit_threshold, "exit_min_layer": config.exit_min_layer}
    retrieval = EarlyExitInformationRetrievalEvaluator(
        queries, corpus, relevant, name="cloze-dev", ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10],
        precision_recall_at_k=[10], map_at_k=[10], **common, **exits,
    )
    documents = list(corpus.values())[: config.dev_queries]
    agreement = [
        TeacherAgreementEvaluator(texts, reference=reference, task=task, name=name, **common, **exits)
        for task, name, texts in (
            ("query", "agreement-queries", list(queries.values())),
            ("document", "agreement-documents", documents),
        )
    ]
    return _AtServingLength([retrieval, *agreement], max_seq_length)


def corpus_depth_evaluator(
    corpus: Any,
    reference: SentenceTransformer,
    depths: Sequence[int] | None = None,
    *,
    dev_documents: int = 200,
    seed: int = 12345,
    num_queries: int = 500,
    document_embeddings: Any = None,
    batch_size: int = 64,
    name: str = "corpus-dev",
) -> SentenceEvaluator:
    """The dev signal of a query encoder for an index of ``corpus`` (ours), from the corpus alone, never a query set
    or a qrels file: up to ``num_queries`` query-like texts of ``dev_documents`` held-out documents
    (:func:`st_leap.corpus.split_documents` with ``seed``, the documents training never sees) retrieving their own
    document from the whole index, which ``reference`` (the index model) embeds once into the shared cache, or
    ``document_embeddings`` (an array, or a path for :func:`st_leap.corpus.read_document_embeddings`) give. A
    :class:`~st_leap.evaluation.QueryDepthEvaluator`: NDCG@10 and cosine to the reference's query embedding per
    depth."""
    from st_leap.corpus import Corpus, corpus_dev, read_corpus, read_document_embeddings, split_documents
    from st_leap.evaluation.depth import QueryDepthEvaluator
    from st_leap.teacher import index_embeddings

    corpus = corpus if isinstance(corpus, Corpus) else read_corpus(corpus)
    if isinstance(document_embeddings, (str, bytes)) or hasattr(document_embeddings, "__fspath__"):
        document_embeddings = read_document_embeddings(document_embeddings, corpus)
    _, dev = split_documents(corpus, dev_documents, seed=seed)
    queries, documents, relevant = corpus_dev(corpus, dev, num_queries=num_queries, seed=seed)
    embeddings = index_embeddings(reference, corpus.documents, document_embeddings)
    return QueryDepthEvaluator(
        queries, documents, relevant, reference=reference, corpus_embeddings=embeddings, depths=depths, name=name,
        batch_size=batch_size, show_progress_bar=False,
    )
