"""st_leap: LEAP (Layer-wise Exit-Aware Pretraining) for sentence-transformers.

- :class:`EarlyExitTransformer`: drop-in for the ``Transformer`` module; ``model.encode(texts, exit_threshold=0.95)``
  stops each sample at the first layer whose mean-pooled state has converged.
- :func:`from_pretrained` / :func:`load`: turn any BERT/RoBERTa/XLM-R/MPNet/DistilBERT sentence-transformers model
  into an early-exit one, and reload a saved one.
- :func:`encode_with_exits`: one call's embeddings with each text's exit layer and the call's counts (threads,
  multi-process pools).
- :func:`diagnose`: is a model exit-compatible? (paper section 5.2)
- :func:`fit_exit_maps`: exit maps (ours), one affine map per layer into the final space, fitted in closed form.
- :func:`fit_query_encoder` (:mod:`st_leap.query_encoder`, ours): a shallow query encoder trained on the documents
  of an index you keep, saved with the index model as one model (``encode_query`` shallow, ``encode_document`` full).
- :func:`calibrate`: per role, the fastest measured operating point within a quality budget, on STS-B or your
  data, with the reference a monitor needs.
- :class:`ExitMonitor` (:mod:`st_leap.monitoring`, ours): serve with exit monitoring, drift alerts and automatic
  fallback to full depth (paper Appendix J).
- :mod:`st_leap.losses`: :class:`~st_leap.losses.LEAPLoss`, the training objective that creates exits.

The names are imported on first use, so ``import st_leap`` (and ``st-leap --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from st_leap.version import __version__

if TYPE_CHECKING:
    from st_leap.diagnostics import diagnose
    from st_leap.evaluation.calibration import calibrate
    from st_leap.exit_maps import fit_exit_maps
    from st_leap.model import ExitEncoding, encode_with_exits, from_pretrained, load
    from st_leap.modules import EarlyExitTransformer
    from st_leap.monitoring import ExitMonitor
    from st_leap.query_encoder import fit_query_encoder

_EXPORTS = {
    "EarlyExitTransformer": "st_leap.modules",
    "from_pretrained": "st_leap.model",
    "load": "st_leap.model",
    "encode_with_exits": "st_leap.model",
    "ExitEncoding": "st_leap.model",
    "diagnose": "st_leap.diagnostics",
    "fit_exit_maps": "st_leap.exit_maps",
    "calibrate": "st_leap.evaluation.calibration",
    "ExitMonitor": "st_leap.monitoring",
    "fit_query_encoder": "st_leap.query_encoder",
}

__all__ = [
    "EarlyExitTransformer",
    "from_pretrained",
    "load",
    "encode_with_exits",
    "ExitEncoding",
    "diagnose",
    "fit_exit_maps",
    "calibrate",
    "ExitMonitor",
    "fit_query_encoder",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'st_leap' has no attribute {name!r}")
