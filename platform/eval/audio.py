"""Input checks and resampling shared by every metric."""

from __future__ import annotations

import numpy as np


def check_wave(wave: np.ndarray, sr: int, what: str = "wave") -> np.ndarray:
    """Validate mono audio and return it as contiguous float64.

    Raises ValueError when `wave` is not 1-D, has no samples, holds NaN/inf, or `sr` is not a
    positive integer.
    """
    if not isinstance(sr, int | np.integer) or sr <= 0:
        raise ValueError(f"{what}: sample rate must be a positive integer, got {sr!r}")
    x = np.asarray(wave)
    if x.ndim != 1:
        raise ValueError(f"{what}: expected mono 1-D audio, got shape {x.shape} (mix down first)")
    if x.size == 0:
        raise ValueError(f"{what}: audio is empty (0 samples)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: audio contains NaN or inf samples")
    return np.ascontiguousarray(x, dtype=np.float64)


def check_pair(
    gen: np.ndarray, ref: np.ndarray, sr: int, ref_sr: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a generated/reference pair that must share one sample rate."""
    if ref_sr is not None and ref_sr != sr:
        raise ValueError(
            f"sample rates differ: generated {sr} Hz vs reference {ref_sr} Hz; "
            "resample one of them first"
        )
    return check_wave(gen, sr, "generated audio"), check_wave(ref, sr, "reference audio")


def resample(wave: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) to `target` Hz; a no-op at equal rates."""
    if sr == target:
        return wave
    import soxr

    return soxr.resample(wave, sr, target, quality="HQ")
