from __future__ import annotations

from st_leap.losses.leap import LEAPLoss

__all__ = ["LEAPLoss"]
