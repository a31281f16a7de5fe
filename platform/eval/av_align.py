"""AV-Align: agreement of audio onsets with video motion peaks (DualDub's DualBench metric).

DualDub (Sec. 4, "Audio-video Alignment") takes AV-Align from TempoTokens (Yariv et al. 2023,
arXiv:2309.16429): "detecting audio and video peaks and calculating their IoU". Following the
TempoTokens reference code:
  audio peaks  librosa onset detection on the audio at 22.05 kHz (onset_strength with default
               hop 512, onset_detect peak picking), as times in seconds
  video peaks  mean Farneback optical-flow magnitude between consecutive grey frames
               (cv2.calcOpticalFlowFarneback(prev, next, None, 0.5, 3, 15, 3, 5, 1.2, 0));
               flow[0] = flow(frame0, frame1), flow[i] = flow(frame i-1, frame i); a peak is a
               strict local maximum flow[i-1] < flow[i] > flow[i+1], at time i / fps
  matching     an audio peak is matched when some video peak lies strictly within
               +-`window_frames` / fps of it (reference: window 1 frame)
  AV-Align     = matched / (#audio peaks + #video peaks - matched)     (IoU, 1 = all matched)
The metric uses only the generated audio and the video; it is "not available" when neither
side has a peak.
"""

from __future__ import annotations

import numpy as np

from dubforge.eval.audio import check_wave, resample
from dubforge.eval.results import MetricResult, measured, not_available

ONSET_RATE = 22050  # librosa.load's default rate in the reference code


def audio_peaks(wave: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s) of mono audio, librosa's onset detector at 22.05 kHz."""
    import librosa

    y = resample(check_wave(wave, sr), sr, ONSET_RATE).astype(np.float32)
    env = librosa.onset.onset_strength(y=y, sr=ONSET_RATE)
    onsets = librosa.onset.onset_detect(onset_envelope=env, sr=ONSET_RATE)
    return librosa.frames_to_time(onsets, sr=ONSET_RATE)


def _grey(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] uint8 grey frames from [T, H, W] or RGB [T, H, W, 3] frames."""
    import cv2

    v = np.asarray(frames)
    if v.ndim not in (3, 4) or (v.ndim == 4 and v.shape[-1] != 3):
        raise ValueError(f"video frames must be [T, H, W] or [T, H, W, 3], got {v.shape}")
    if v.dtype != np.uint8:
        v = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    if v.ndim == 4:
        # RGB2GRAY on RGB frames = the reference's BGR2GRAY on the BGR frames cv2 decodes
        v = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v])
    return v


def flow_trajectory(frames: np.ndarray) -> np.ndarray:
    """Mean optical-flow magnitude per frame [T] (flow[0] repeats flow[1], as the reference)."""
    import cv2

    g = _grey(frames)
    if len(g) < 2:
        raise ValueError(f"AV-Align needs at least 2 video frames, got {len(g)}")
    mags = []
    for prev, nxt in zip(g[:-1], g[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.mean(np.hypot(flow[..., 0], flow[..., 1]))))
    return np.array([mags[0], *mags])


def video_peaks(frames: np.ndarray, fps: float) -> np.ndarray:
    """Times (s) of strict local maxima of the optical-flow trajectory."""
    f = flow_trajectory(frames)
    i = np.flatnonzero((f[1:-1] > f[:-2]) & (f[1:-1] > f[2:])) + 1
    return i / float(fps)


def peak_iou(a: np.ndarray, v: np.ndarray, window_s: float) -> float:
    """matched / (|a| + |v| - matched); an audio peak matches a video peak within +-window_s."""
    a, v = np.asarray(a, np.float64), np.asarray(v, np.float64)
    if a.size + v.size == 0:
        raise ValueError("IoU of two empty peak sets is undefined")
    matched = sum(bool(np.any(np.abs(v - t) < window_s)) for t in a)
    return matched / (a.size + v.size - matched)


def av_align(
    wave: np.ndarray, sr: int, frames: np.ndarray, fps: float, window_frames: float = 1.0
) -> MetricResult:
    """AV-Align IoU in [0, 1] between audio onsets and video motion peaks."""
    if not fps or fps <= 0:
        raise ValueError(f"video fps must be positive, got {fps!r}")
    a, v = audio_peaks(wave, sr), video_peaks(frames, fps)
    if a.size + v.size == 0:
        return not_available("av_align", "no audio onsets and no video motion peaks")
    iou = peak_iou(a, v, window_frames / fps)
    return measured("av_align", iou, audio_peaks=int(a.size), video_peaks=int(v.size))
