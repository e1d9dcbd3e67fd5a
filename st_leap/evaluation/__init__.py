"""Evaluation with early exit: sentence-transformers evaluators, mteb and beir helpers, NN@k consistency, theta sweeps.

- :class:`EarlyExitEmbeddingSimilarityEvaluator`, :class:`EarlyExitInformationRetrievalEvaluator`: training-time
  evaluators that encode with a given exit setting and add E[layers], exit rate and layer reduction to the metrics.
- :func:`run_mteb` (:mod:`st_leap.evaluation.mteb`): STSBenchmark, SciFact, NFCorpus through ``mteb.evaluate`` from
  the Hub or the local copies, results in mteb's format with the exit settings in the model metadata.
- :class:`BEIRModel`, :func:`evaluate_beir` (:mod:`st_leap.evaluation.beir`): BEIR ``DenseRetrievalExactSearch``
  adapter, NDCG@1,3,5,10 on any BEIR-format folder.
- :func:`nn_consistency`, :func:`exit_layer_distribution` (:mod:`st_leap.evaluation.consistency`).
- :func:`sweep`, :func:`calibrate` (:mod:`st_leap.evaluation.sweep`): Pareto and decision tables, calibration.

mteb and beir are imported only when their helpers run.
"""

from __future__ import annotations

from st_leap.evaluation._utils import MODEL_DEFAULT
from st_leap.evaluation.beir import BEIRModel, evaluate_beir, load_beir_folder
from st_leap.evaluation.consistency import exit_layer_distribution, nn_consistency
from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator, EarlyExitInformationRetrievalEvaluator
from st_leap.evaluation.mteb import run_mteb
from st_leap.evaluation.sweep import PAPER_THRESHOLDS, calibrate, choose_threshold, sweep

__all__ = [
    "MODEL_DEFAULT",
    "EarlyExitEmbeddingSimilarityEvaluator",
    "EarlyExitInformationRetrievalEvaluator",
    "run_mteb",
    "BEIRModel",
    "evaluate_beir",
    "load_beir_folder",
    "nn_consistency",
    "exit_layer_distribution",
    "sweep",
    "calibrate",
    "choose_threshold",
    "PAPER_THRESHOLDS",
]
