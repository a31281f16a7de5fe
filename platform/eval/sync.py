"""Duration and timing of speech against the reference: onset/offset error and length ratio.

Speech activity comes from a detector chosen by name:
  "energy"  frame RMS (25 ms window, 10 ms hop); a frame is speech when its level is within
            `floor_db` (default 35 dB) of the loudest frame and above -60 dBFS; runs shorter than
            30 ms are ignored (clicks). Deterministic and dependency-free.
  "silero"  silero-vad (its ONNX model ships in the pip package; 16 kHz, threshold 0.5).
Times are frame centres (energy) or silero's span edges, in seconds from the clip start.

Metrics (generated g vs reference r, on = start of the first speech span, off = end of the last):
    sync_onset_error   = |on_g - on_r|        seconds
    sync_offset_error  = |off_g - off_r|      seconds
    speech_length_ratio = (off_g - on_g) / (off_r - on_r)   (1 = same speech length)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dubforge.eval.audio import check_pair, check_wave, resample
from dubforge.eval.results import MetricResult, measured, not_available

Spans = list[tuple[float, float]]
ActivityDetector = Callable[[np.ndarray, int], Spans]

_WIN_S, _HOP_S, _MIN_RUN_S, _ABS_FLOOR_DB = 0.025, 0.010, 0.030, -60.0


def energy_activity(wave: np.ndarray, sr: int, floor_db: float = 35.0) -> Spans:
    """Speech spans [(start, end)] in seconds from frame energy (see the module docstring)."""
    x = check_wave(wave, sr)
    win, hop = max(1, round(_WIN_S * sr)), max(1, round(_HOP_S * sr))
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]  # [F, win]
    db = 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    active = (db > db.max() - floor_db) & (db > _ABS_FLOOR_DB)
    centre = (np.arange(len(db)) * hop + win / 2) / sr
    min_run = max(1, round(_MIN_RUN_S / _HOP_S))
    spans: Spans = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2], strict=True):  # runs [a, b) of active frames
        if b - a >= min_run:
            spans.append((float(centre[a]), float(centre[b - 1])))
    return spans


class SileroActivity:
    """silero-vad's ONNX model, loaded once; call it like `energy_activity`."""

    RATE = 16000

    def __init__(self, threshold: float = 0.5) -> None:
        import silero_vad

        self._model = silero_vad.load_silero_vad(onnx=True)
        self._timestamps = silero_vad.get_speech_timestamps
        self.threshold = threshold

    def __call__(self, wave: np.ndarray, sr: int) -> Spans:
        """Speech spans [(start, end)] in seconds."""
        import torch

        x = resample(check_wave(wave, sr), sr, self.RATE).astype(np.float32)
        ts = self._timestamps(
            torch.from_numpy(x),
            self._model,
            threshold=self.threshold,
            sampling_rate=self.RATE,
            return_seconds=True,
        )
        return [(float(t["start"]), float(t["end"])) for t in ts]


def build_activity_detector(name: str, floor_db: float = 35.0) -> ActivityDetector:
    """The detector registered under `name` ("energy" or "silero")."""
    if name == "energy":
        return lambda wave, sr: energy_activity(wave, sr, floor_db)
    if name == "silero":
        return SileroActivity()
    raise ValueError(f"unknown activity detector {name!r}; choose 'energy' or 'silero'")


def sync_metrics(
    gen: np.ndarray, ref: np.ndarray, sr: int, detector: ActivityDetector = energy_activity
) -> dict[str, MetricResult]:
    """Onset/offset errors (s) and speech-length ratio of generated vs reference speech."""
    gen, ref = check_pair(gen, ref, sr)
    sg, sr_ = detector(gen, sr), detector(ref, sr)
    names = ("sync_onset_error", "sync_offset_error", "speech_length_ratio")
    missing = [w for w, s in (("generated", sg), ("reference", sr_)) if not s]
    if missing:
        reason = f"no speech detected in the {' and '.join(missing)} audio"
        return {n: not_available(n, reason) for n in names}
    on_g, off_g, on_r, off_r = sg[0][0], sg[-1][1], sr_[0][0], sr_[-1][1]
    if off_r <= on_r:
        return {n: not_available(n, "reference speech has zero length") for n in names}
    times = {"onset_gen": on_g, "offset_gen": off_g, "onset_ref": on_r, "offset_ref": off_r}
    return {
        "sync_onset_error": measured("sync_onset_error", abs(on_g - on_r), **times),
        "sync_offset_error": measured("sync_offset_error", abs(off_g - off_r), **times),
        "speech_length_ratio": measured(
            "speech_length_ratio", (off_g - on_g) / (off_r - on_r), **times
        ),
    }
