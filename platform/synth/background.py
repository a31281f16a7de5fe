"""Background stems (noise, hum, music, ambience) and the level curve that mixes them.

Each generator returns unit-RMS audio of shape [channels, n]; `level_curve` turns per-line
target levels into a smooth gain so a line's background sits at its planned dBFS.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

# shape key: c = channels, n = samples


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS of any array (-inf-safe: floors at -120 dB)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-6))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.sqrt(np.mean(x**2))), 1e-9)).astype(np.float32)


def _colored_noise(rng: np.random.Generator, c: int, n: int, exponent: float) -> np.ndarray:
    """1/f^exponent noise via spectral shaping; exponent 1 = pink, 2 = brown."""
    spec = np.fft.rfft(rng.standard_normal((c, n)), axis=-1)
    f = np.arange(spec.shape[-1], dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / f ** (exponent / 2.0), n=n, axis=-1)


def noise(rng: np.random.Generator, c: int, n: int, sr: int) -> np.ndarray:
    """Pink noise band-limited to 60 Hz - 8 kHz, like air conditioning or traffic."""
    sos = signal.butter(4, [60, 8000], btype="bandpass", fs=sr, output="sos")
    return _unit(signal.sosfilt(sos, _colored_noise(rng, c, n, 1.0), axis=-1))


def hum(rng: np.random.Generator, c: int, n: int, sr: int) -> np.ndarray:
    """Mains hum with harmonics plus a slowly beating drone."""
    t = np.arange(n) / sr
    mains = (50.0, 60.0)[rng.integers(2)]
    x = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6))
    drone = 0.5 * np.sin(2 * np.pi * rng.uniform(180, 320) * t) * (1 + 0.5 * np.sin(0.7 * t))
    mono = x + drone + 0.05 * rng.standard_normal(n)
    return _unit(np.stack([np.roll(mono, 37 * ch) for ch in range(c)]))


def music(rng: np.random.Generator, c: int, n: int, sr: int) -> np.ndarray:
    """A chord progression of decaying harmonic notes over a soft kick, panned per voice."""
    t_note = 0.5 if rng.integers(2) else 0.375  # seconds per beat
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    progressions = ((0, 5, 7, 3), (0, 7, 9, 5), (0, 3, 8, 10))
    prog = progressions[rng.integers(len(progressions))]
    out = np.zeros((c, n))
    beat = int(t_note * sr)
    env = np.exp(-np.arange(beat) / (0.25 * sr))
    tb = np.arange(beat) / sr
    for b, start in enumerate(range(0, n, beat)):
        seg = slice(start, min(n, start + beat))
        m = seg.stop - seg.start
        chord = prog[(b // 4) % len(prog)]
        for voice, interval in enumerate((0, 4, 7, 12)):
            f = root * 2 ** ((chord + interval) / 12)
            tone = sum(np.sin(2 * np.pi * f * h * tb[:m]) / h**1.5 for h in range(1, 4)) * env[:m]
            pan = (voice + 0.5) / 4
            gains = (1 - pan, pan) if c == 2 else (1.0,)
            for ch, g in enumerate(gains):
                out[ch, seg] += g * tone
        kick = np.sin(2 * np.pi * 55 * tb[:m]) * np.exp(-tb[:m] / 0.08)
        out[:, seg] += 0.8 * kick
    return _unit(out)


def ambience(rng: np.random.Generator, c: int, n: int, sr: int) -> np.ndarray:
    """Brown-noise wind with sparse chirps, like an outdoor scene."""
    x = _colored_noise(rng, c, n, 2.0)
    x = x / np.abs(x).max()
    for _ in range(max(1, n // sr // 2)):
        at = int(rng.integers(0, max(1, n - sr // 4)))
        m = min(sr // 5, n - at)
        f = np.linspace(rng.uniform(2500, 3500), rng.uniform(4000, 5000), m)
        chirp = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(m)
        out_ch = int(rng.integers(c))
        x[out_ch, at : at + m] += 0.3 * chirp
    return _unit(x)


GENERATORS = {"noise": noise, "hum": hum, "music": music, "ambience": ambience}


def level_curve(
    n: int, sr: int, base_db: float, spans: list[tuple[float, float, float]], ramp: float = 0.15
) -> np.ndarray:
    """Gain per sample: `base_db` everywhere, and each (start, end, db) span held at its level.

    The ramps lie outside each span, so the level measured over the span is exactly its target.
    """
    db = np.full(n, base_db, dtype=np.float64)
    r = max(1, int(ramp * sr))
    for start, end, level in spans:
        a, b = int(start * sr), int(end * sr)
        db[max(0, a) : min(n, b)] = level
        # ramp from the surrounding level into the span on both sides (linear in dB)
        lo = max(0, a - r)
        db[lo:a] = np.linspace(db[lo], level, a - lo, endpoint=False) if a > lo else db[lo:a]
        hi = min(n, b + r)
        if hi > b:
            db[b:hi] = np.linspace(level, db[min(hi, n - 1)], hi - b)
    return (10.0 ** (db / 20.0)).astype(np.float32)
