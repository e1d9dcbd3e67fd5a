from __future__ import annotations

from st_leap.losses.leap import LEAPLoss
from st_leap.losses.query_retrieval import QueryRetrievalLoss

__all__ = ["LEAPLoss", "QueryRetrievalLoss"]
