"""The energy filter (DualDub): drop a clip when a stem its tasks need is too quiet.

Measure: RMS level in dBFS of the stem's samples over the whole clip (padding included), for
float audio in [-1, 1]. A full-scale sine is -3 dBFS; silence floors at -120 dB. A clip is
rejected when any required stem is below the threshold (default -40 dB, DualDub's choice).
"""

from __future__ import annotations

import numpy as np

from dubforge.schema import TASK_STREAMS as TASK_STEMS  # a task needs the stems it generates


def rms_db(wave: np.ndarray) -> float:
    """RMS level in dBFS, floored at -120 dB."""
    if wave.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return max(20.0 * np.log10(max(rms, 1e-12)), -120.0)


def required_stems(tasks: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The union of stems the tasks need, e.g. ("v2st",) -> ("speech", "background")."""
    unknown = [t for t in tasks if t not in TASK_STEMS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(TASK_STEMS)}")
    need = {s for t in tasks for s in TASK_STEMS[t]}
    return tuple(s for s in ("speech", "background") if s in need)


def judge(
    stems: dict[str, np.ndarray], required: tuple[str, ...], threshold_db: float
) -> tuple[dict[str, float], str | None, str]:
    """(level of every stem in dB, rejection reason or None, detail)."""
    levels = {name: round(rms_db(wave), 2) for name, wave in stems.items()}
    quiet = [s for s in required if levels.get(s, -120.0) < threshold_db]
    if not quiet:
        return levels, None, ""
    detail = ", ".join(f"{s} {levels.get(s, -120.0):.1f} dB" for s in quiet)
    return levels, f"low_energy_{quiet[0]}", f"{detail} < {threshold_db:.0f} dB"
