"""The value every metric returns: a number, or "not available" with the reason.

A metric that cannot run (its model is not configured, the clip has no voiced frames, ...) must
never report a made-up number; it returns `MetricResult(name, None, reason)` instead, and tables
show it as "n/a" with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricResult:
    """One metric's outcome. `value` is None exactly when the metric is not available; then
    `reason` says why (and how to make it available). `details` holds side numbers such as
    frame counts, for inspection only."""

    name: str
    value: float | None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value is None and not self.reason:
            raise ValueError(f"metric {self.name!r}: a missing value needs a reason")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"metric {self.name!r}: value {self.value} is not finite")

    @property
    def available(self) -> bool:
        """True when the metric produced a number."""
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: {"value": float | None, "reason": str | None, "details": {...}}."""
        return {"value": self.value, "reason": self.reason, "details": dict(self.details)}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> MetricResult:
        """Inverse of `to_dict`."""
        return cls(name, data.get("value"), data.get("reason"), dict(data.get("details") or {}))


def measured(name: str, value: float, **details: Any) -> MetricResult:
    """A metric that ran: its value as a plain float."""
    return MetricResult(name, float(value), None, details)


def not_available(name: str, reason: str) -> MetricResult:
    """A metric that could not run, with the reason (never a placeholder number)."""
    return MetricResult(name, None, reason)
