"""Evaluation with early exit: sentence-transformers evaluators, mteb and beir helpers, NN@k consistency, theta sweeps.

- :class:`EarlyExitEmbeddingSimilarityEvaluator`, :class:`EarlyExitInformationRetrievalEvaluator`: training-time
  evaluators that encode with a given exit setting and add E[layers], exit rate and layer reduction to the metrics.
- :func:`run_mteb` (:mod:`st_leap.evaluation.mteb`): STSBenchmark, SciFact, NFCorpus through ``mteb.evaluate`` from
  the Hub or the local copies, results in mteb's format with the exit settings in the model metadata.
- :class:`BEIRModel`, :func:`evaluate_beir` (:mod:`st_leap.evaluation.beir`): BEIR ``DenseRetrievalExactSearch``
  adapter, NDCG@1,3,5,10 on any BEIR-format folder.
- :class:`TeacherAgreementEvaluator` (:mod:`st_leap.evaluation.agreement`): a retrieval-free dev signal, the cosine
  to a reference model's embeddings (the model that built your index) at the model's exit setting.
- :class:`QueryDepthEvaluator` (:mod:`st_leap.evaluation.depth`): queries cut at each depth against documents
  embedded once by a reference model (keep your index, make queries shallower).
- :func:`nn_consistency` (:mod:`st_leap.evaluation.consistency`): NN@k of exited vs full-depth embeddings.
- :func:`sweep`, :func:`measure` (:mod:`st_leap.evaluation.sweep`): Pareto and decision tables, the per-layer
  measurement of the training benchmarks.
- :func:`calibrate` (:mod:`st_leap.evaluation.calibration`, also ``st_leap.calibrate``): the one calibration, on
  STS-B or your data, per role, with the monitoring reference of each pick.

mteb and beir are imported only when their helpers run (extras ``st-leap[mteb]``, ``st-leap[beir]``).
"""

from __future__ import annotations

from st_leap.evaluation.agreement import TeacherAgreementEvaluator
from st_leap.evaluation.beir import BEIRModel, evaluate_beir, load_beir_folder
from st_leap.evaluation.calibration import calibrate
from st_leap.evaluation.consistency import nn_consistency
from st_leap.evaluation.depth import QueryDepthEvaluator
from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator, EarlyExitInformationRetrievalEvaluator
from st_leap.evaluation.mteb import run_mteb
from st_leap.evaluation.sweep import PAPER_THRESHOLDS, choose_threshold, measure, sweep
from st_leap.model import MODEL_DEFAULT

__all__ = [
    "MODEL_DEFAULT",
    "EarlyExitEmbeddingSimilarityEvaluator",
    "EarlyExitInformationRetrievalEvaluator",
    "TeacherAgreementEvaluator",
    "QueryDepthEvaluator",
    "run_mteb",
    "BEIRModel",
    "evaluate_beir",
    "load_beir_folder",
    "nn_consistency",
    "sweep",
    "calibrate",
    "choose_threshold",
    "measure",
    "PAPER_THRESHOLDS",
]
