"""WORLD analysis shared by MCD and the F0 metrics: F0, spectral envelope, mel-cepstrum, DTW.

Settings follow the V2C benchmark's reference code (pymcd, used by V2C-Net [Chen et al., CVPR
2022] and every later paper reporting MCD-DTW / MCD-DTW-SL): audio at 22.05 kHz, 5 ms frames,
WORLD F0 (DIO + StoneMask) and CheapTrick envelope with a 512-point FFT, then a 13th-order
mel-cepstrum with all-pass constant alpha = 0.65.

The envelope -> mel-cepstrum step is ours (numpy) and equals SPTK's `mcep` with `maxiter=0`,
`etype=1`, `eps=1e-8`, i.e. the frequency-warped cepstrum of the log power envelope:
    c = IDFT(log(S + eps)),  c[0] /= 2,  c[N/2] /= 2   (one-sided, minimum-phase cepstrum)
    mc = freqt(c, order, alpha)                         (Oppenheim & Johnson all-pass warping)
so that log|H(e^{jw})| = sum_m mc_m cos(m * w~) with w~ the warped frequency and |H|^2 = S.

Shapes: T = frames (5 ms), K = fft_size // 2 + 1 envelope bins, M = order + 1 cepstral coefficients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from dubforge.eval.audio import check_wave, resample

WORLD_RATE = 22050
FRAME_PERIOD_MS = 5.0
FFT_SIZE = 512
MCEP_ORDER = 13
MCEP_ALPHA = 0.65  # all-pass constant commonly used at 22.05 kHz (pymcd)


def _pyworld() -> ModuleType:
    # pyworld 0.3.5 imports pkg_resources only to read its own version; that import warns
    # (deprecation, sys.path notes) about nothing we can act on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pyworld

    return pyworld


@dataclass(frozen=True)
class WorldAnalysis:
    """WORLD features of one utterance at 22.05 kHz with 5 ms frames.

    f0: [T] Hz, 0 where unvoiced; sp: [T, K] power envelope; mcep: [T, M] mel-cepstrum.
    """

    f0: np.ndarray
    sp: np.ndarray
    mcep: np.ndarray

    @property
    def frames(self) -> int:
        """Number of 5 ms frames."""
        return int(self.f0.shape[0])


def analyze(
    wave: np.ndarray, sr: int, f0_method: str = "dio", v2c_compat: bool = False
) -> WorldAnalysis:
    """WORLD F0, envelope and mel-cepstrum of mono audio (resampled to 22.05 kHz first).

    `f0_method`: "dio" (DIO + StoneMask, what pymcd's `wav2world` uses) or "harvest" (slower,
    fewer voicing errors). `v2c_compat=True` feeds the power envelope to the cepstrum as if it
    were an amplitude spectrum, as pymcd does (`pysptk.mcep(..., itype=3)`), which doubles
    every coefficient; keep it False for a standard mel-cepstrum.
    """
    x = resample(check_wave(wave, sr), sr, WORLD_RATE)
    pw = _pyworld()
    if f0_method == "dio":
        f0, t = pw.dio(x, WORLD_RATE, frame_period=FRAME_PERIOD_MS)
        f0 = pw.stonemask(x, f0, t, WORLD_RATE)
    elif f0_method == "harvest":
        f0, t = pw.harvest(x, WORLD_RATE, frame_period=FRAME_PERIOD_MS)
    else:
        raise ValueError(f"unknown f0_method {f0_method!r}; choose 'dio' or 'harvest'")
    sp = pw.cheaptrick(x, f0, t, WORLD_RATE, fft_size=FFT_SIZE)
    mcep = sp_to_mcep(np.square(sp) if v2c_compat else sp, MCEP_ORDER, MCEP_ALPHA)
    return WorldAnalysis(f0=f0, sp=sp, mcep=mcep)


def sp_to_mcep(sp: np.ndarray, order: int, alpha: float, eps: float = 1e-8) -> np.ndarray:
    """Mel-cepstrum [T, order + 1] of a power spectral envelope sp: [T, K] (K = N/2 + 1).

    The SPTK `mcep` initial estimate (no Newton-Raphson refinement, as pymcd's `maxiter=0`);
    see the module docstring for the equations.
    """
    sp = np.atleast_2d(np.asarray(sp, dtype=np.float64))
    k = sp.shape[1]
    if k < 2:
        raise ValueError(f"spectral envelope needs at least 2 bins, got {k}")
    c = np.fft.irfft(np.log(sp + eps), n=2 * (k - 1), axis=1)[:, :k]  # [T, K]
    c[:, 0] /= 2.0
    c[:, k - 1] /= 2.0
    return freqt(c, order, alpha)


def freqt(c: np.ndarray, order: int, alpha: float) -> np.ndarray:
    """Warp one-sided cepstra c: [T, L] onto the all-pass (mel) frequency axis -> [T, order+1].

    The recursion of SPTK's `freqt` (Oppenheim & Johnson 1972): feed c[L-1] ... c[0] through a
    cascade of first-order all-pass sections z~^-1 = (z^-1 - alpha) / (1 - alpha z^-1).
    """
    c = np.atleast_2d(np.asarray(c, dtype=np.float64))
    beta = 1.0 - alpha * alpha
    g = np.zeros((c.shape[0], order + 1))  # [T, M]
    for i in range(c.shape[1] - 1, -1, -1):
        d = g.copy()
        g[:, 0] = c[:, i] + alpha * d[:, 0]
        if order >= 1:
            g[:, 1] = beta * d[:, 0] + alpha * d[:, 1]
        for j in range(2, order + 1):
            g[:, j] = d[:, j - 1] + alpha * (d[:, j] - g[:, j - 1])
    return g


def warped_log_spectrum(mcep: np.ndarray, alpha: float, n_bins: int) -> np.ndarray:
    """log|H| on `n_bins` linear frequencies in [0, pi] of mel-cepstra mcep: [T, M].

    The inverse of `sp_to_mcep` up to truncation (log S = 2 * this); used to test it.
    """
    w = np.linspace(0.0, np.pi, n_bins)
    # phase of the all-pass z~^-1 at z = e^{jw}: the warped frequency
    ww = w + 2.0 * np.arctan(alpha * np.sin(w) / (1.0 - alpha * np.cos(w)))
    m = np.arange(np.asarray(mcep).shape[-1])
    return np.atleast_2d(mcep) @ np.cos(np.outer(m, ww))


def dtw_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Optimal DTW path [L, 2] (index into a, index into b) under Euclidean frame distance.

    Exact DTW with steps (1,1), (1,0), (0,1) of equal weight (librosa). pymcd uses fastdtw, an
    approximation of the same problem; the exact path costs at most as much.
    """
    import librosa

    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("DTW needs at least one frame on each side")
    _, wp = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean", backtrack=True)
    return np.ascontiguousarray(wp[::-1])
