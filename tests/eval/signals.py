"""Synthetic test media: voiced "speech" with known F0 and pauses, tone bursts at known onsets,
video whose square jumps at chosen frames, and the script lines the espeak fixtures speak."""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

SR = 22050
TEXT_A = "The captain left the lantern by the river before dawn."
TEXT_B = "Nobody believed that the baker watched the radio in the rain."


def voice(
    f0: float = 120.0,
    dur: float = 1.2,
    sr: int = SR,
    pauses: tuple[tuple[float, float], ...] = ((0.45, 0.6),),
    lead: float = 0.15,
    tail: float = 0.15,
    formants: tuple[float, ...] = (700.0, 1200.0, 2600.0),
    vibrato: float = 0.04,
) -> np.ndarray:
    """A band-limited harmonic source at `f0` Hz (5 Hz vibrato of +-`vibrato`) through formant
    resonators, silent for `lead` s, the `pauses` (s, relative to speech start) and `tail` s."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    f = f0 * (1.0 + vibrato * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    kmax = int(0.45 * sr / f.max())
    src = sum(np.sin(k * phase) / k for k in range(1, kmax + 1))
    x = src
    for fc in formants:  # two-pole resonator, 80 Hz bandwidth
        r = np.exp(-np.pi * 80.0 / sr)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], x)
    env = np.ones(n)
    for a, b in pauses:
        env[int(a * sr) : int(b * sr)] = 0.0
    env = np.convolve(env, np.hanning(int(0.01 * sr)) / (0.005 * sr), mode="same")  # 10 ms ramps
    x = 0.5 * x * env / np.abs(x * env).max()
    out = np.concatenate([np.zeros(int(lead * sr)), x, np.zeros(int(tail * sr))])
    return (out + 1e-4 * np.random.default_rng(0).standard_normal(len(out))).astype(np.float32)


def bursts(onsets: list[float], dur: float, sr: int = SR, length: float = 0.12) -> np.ndarray:
    """440 Hz tone bursts (5 ms attack, smooth `length` s decay) starting at `onsets` s."""
    x = np.zeros(int(dur * sr))
    t = np.arange(int(length * sr)) / sr
    decay = 0.5 * (1 + np.cos(np.pi * t / length))  # no click at the end: one onset per burst
    b = np.sin(2 * np.pi * 440.0 * t) * np.minimum(1.0, t / 0.005) * decay
    for o in onsets:
        i = int(round(o * sr))
        x[i : i + len(b)] += b[: len(x) - i]
    return (0.5 * x).astype(np.float32)


def jumping_square(jumps: list[int], n_frames: int, size: int = 64) -> np.ndarray:
    """RGB frames [T, size, size, 3]: a bright square on grey that moves to a new place at each
    frame index in `jumps` and stays still otherwise."""
    frames = np.full((n_frames, size, size, 3), 60, np.uint8)
    spots = [(8, 8), (8, 36), (36, 36), (36, 8)]
    k = 0
    for i in range(n_frames):
        if i in jumps:
            k += 1
        y, x = spots[k % len(spots)]
        frames[i, y : y + 20, x : x + 20] = 230
    return frames


def pad(wave: np.ndarray, lead: float, tail: float = 0.3, sr: int = SR) -> np.ndarray:
    """`wave` with `lead` s of silence before it and `tail` s after."""
    z = np.zeros
    return np.concatenate([z(int(lead * sr), np.float32), wave, z(int(tail * sr), np.float32)])
