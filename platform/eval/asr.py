"""Pluggable speech recognition for WER.

An ASR is any callable `(wave, sr) -> str` (`Transcriber`). `WhisperTranscriber` loads a
Whisper checkpoint (WhisperForConditionalGeneration + WhisperProcessor files, e.g. a saved
whisper-large-v3 as in DiFlowDubber / MM-MovieDubber) from a local folder only: nothing is
downloaded, and an unset `EvalConfig.asr_path` means WER is "not available".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dubforge.eval.audio import check_wave, resample

Transcriber = Callable[[np.ndarray, int], str]


class WhisperTranscriber:
    """Greedy Whisper transcription of one clip (at most 30 s: Whisper's input window)."""

    RATE = 16000
    MAX_SECONDS = 30.0

    def __init__(self, path: str | Path, device: str = "cpu", language: str | None = "en") -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"EvalConfig.asr_path {folder} holds no Whisper checkpoint (config.json missing);"
                " save one there with save_pretrained or unset asr_path"
            )
        self.processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
        model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
        self.model = model.to(device).eval()
        self.device, self.language = torch.device(device), language

    def __call__(self, wave: np.ndarray, sr: int) -> str:
        """The transcript of mono audio at `sr` (special tokens removed, stripped)."""
        import torch

        x = resample(check_wave(wave, sr), sr, self.RATE).astype(np.float32)
        if len(x) > self.MAX_SECONDS * self.RATE:
            raise ValueError(
                f"clip is {len(x) / self.RATE:.1f} s; Whisper transcribes at most 30 s: split it"
            )
        feats = self.processor(x, sampling_rate=self.RATE, return_tensors="pt").input_features
        kwargs = {}
        # multilingual checkpoints know their language tokens; a model without them (or an
        # English-only one) decodes from its generation config alone
        if self.language and getattr(self.model.generation_config, "lang_to_id", None):
            kwargs = {"language": self.language, "task": "transcribe"}
        with torch.inference_mode():
            ids = self.model.generate(feats.to(self.device, self.model.dtype), **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def build_asr(
    path: str | Path | None, device: str = "cpu", language: str | None = "en"
) -> Transcriber | None:
    """A Whisper transcriber from a local folder, or None when no path is configured."""
    return None if path is None else WhisperTranscriber(path, device, language)
