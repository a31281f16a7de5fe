"""Voice-activity segmentation for inputs without subtitles (silero-vad, whose ONNX model ships
inside its pip package, so nothing is downloaded). Its spans become cues without text; the clips
made from them are marked untranscribed (still good for video-to-audio training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dubforge.ingest.decode import decode_audio
from dubforge.ingest.records import Cue

VAD_RATE = 16000


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    min_speech: float = 0.25  # seconds
    min_silence: float = 0.3  # a shorter pause does not end a span
    max_speech: float = 30.0


class VoiceActivity:
    """Loads the silero-vad ONNX model once; `spans` finds speech in a 16 kHz mono wave."""

    def __init__(self, cfg: VadConfig = VadConfig()) -> None:  # noqa: B008 - frozen, immutable
        import silero_vad

        self.cfg = cfg
        self._model = silero_vad.load_silero_vad(onnx=True)
        self._timestamps = silero_vad.get_speech_timestamps

    def spans(self, wave: np.ndarray) -> list[tuple[float, float]]:
        """[(start, end)] seconds of speech in mono float32 audio at 16 kHz."""
        import torch

        ts = self._timestamps(
            torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
            self._model,
            threshold=self.cfg.threshold,
            sampling_rate=VAD_RATE,
            min_speech_duration_ms=int(self.cfg.min_speech * 1000),
            min_silence_duration_ms=int(self.cfg.min_silence * 1000),
            max_speech_duration_s=self.cfg.max_speech,
            return_seconds=True,
        )
        return [(float(t["start"]), float(t["end"])) for t in ts]

    def cues(self, path: str | Path, duration: float, timeout: float) -> list[Cue]:
        """Untranscribed cues for the whole of a local media file (decoded once at 16 kHz;
        ffmpeg gets `timeout` + duration seconds)."""
        wave = decode_audio(path, 0.0, duration, VAD_RATE, timeout=timeout)
        return [Cue(a, b, "", k) for k, (a, b) in enumerate(self.spans(wave))]
