"""Speaker similarity SECS: cosine of speaker embeddings of generated and reference speech.

SECS = e_gen . e_ref / (|e_gen| |e_ref|) in [-1, 1] (DiFlowDubber Sec. 4.1 and ProDubber follow
StyleDubber / Speaker2Dubber: "speaker encoder cosine similarity"). The encoder is pluggable:
anything with `embed(wave, sr) -> 1-D array` is a `SpeakerEncoder`; by name:
  "resemblyzer"  GE2E d-vector (256-d) of resemblyzer, whose pretrained weights ship inside the
                 pip package (nothing is downloaded). It resamples to 16 kHz, normalises the
                 level and cuts long pauses with webrtcvad before embedding.
  "none"         SECS is reported "not available".
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dubforge.eval.audio import check_pair, check_wave
from dubforge.eval.config import SPEAKER_ENCODERS
from dubforge.eval.results import MetricResult, measured, not_available


class SpeakerEncoder(Protocol):
    """Maps mono audio at `sr` to a fixed-size speaker embedding."""

    def embed(self, wave: np.ndarray, sr: int) -> np.ndarray:
        """A 1-D speaker embedding of `wave`."""
        ...


class ResemblyzerEncoder:
    """resemblyzer's GE2E `VoiceEncoder`, loaded once from the weights in its package."""

    def __init__(self, device: str = "cpu") -> None:
        from resemblyzer import VoiceEncoder, preprocess_wav

        self._encoder = VoiceEncoder(device, verbose=False)
        self._preprocess = preprocess_wav

    def embed(self, wave: np.ndarray, sr: int) -> np.ndarray:
        """256-d unit-norm embedding; ValueError when no speech is left after VAD trimming."""
        x = check_wave(wave, sr).astype(np.float32)
        if not np.any(x):  # resemblyzer's level normalisation divides by the RMS
            raise ValueError("audio is digital silence: no speaker to embed")
        x = self._preprocess(x, source_sr=sr)
        if len(x) == 0:
            raise ValueError("no speech left after resemblyzer's silence trimming")
        return np.asarray(self._encoder.embed_utterance(x), dtype=np.float64)


def build_speaker_encoder(name: str, device: str = "cpu") -> SpeakerEncoder | None:
    """The encoder registered under `name`; None for "none"."""
    if name == "resemblyzer":
        return ResemblyzerEncoder(device)
    if name == "none":
        return None
    raise ValueError(f"unknown speaker encoder {name!r}; choose from {SPEAKER_ENCODERS}")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two 1-D vectors; ValueError for a zero vector."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("cosine of a zero embedding is undefined")
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))  # rounding can step past +-1


def secs(gen: np.ndarray, ref: np.ndarray, sr: int, encoder: SpeakerEncoder | None) -> MetricResult:
    """Speaker-embedding cosine similarity; "not available" without an encoder."""
    gen, ref = check_pair(gen, ref, sr)
    if encoder is None:
        return not_available("secs", "no speaker encoder configured (EvalConfig.speaker_encoder)")
    try:
        eg, er = encoder.embed(gen, sr), encoder.embed(ref, sr)
    except ValueError as e:  # silent clip: the encoder has nothing to embed
        return not_available("secs", str(e))
    return measured("secs", cosine(eg, er))
