"""Evaluation settings: one frozen config; which models exist decides which metrics run.

A metric whose model path is unset reports "not available" (see `results.py`); a path that is
set but missing is a configuration error raised when the models are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# speaker encoders by short name (see speaker.py); "none" switches SECS off
SPEAKER_ENCODERS = ("resemblyzer", "none")

# MCD-DTW definitions (see mcd.py): "v2c" is V2C's reference code (pymcd), the one the papers'
# tables use; "dubforge" is a standard mel-cepstrum without c0
McdDefinition = Literal["v2c", "dubforge"]
MCD_DEFINITION: McdDefinition = "v2c"


class EvalConfig(BaseModel):
    """What `Evaluator` loads and how each metric is computed (defaults follow the papers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Whisper checkpoint folder (WhisperForConditionalGeneration + WhisperProcessor files);
    # None -> WER is "not available"
    asr_path: Path | None = None
    asr_language: str | None = "en"
    # SyncNet state dict (syncnet_python's layout, e.g. syncnet_v2.model); None -> LSE n/a
    syncnet_path: Path | None = None
    speaker_encoder: str = "resemblyzer"
    device: str = "cpu"
    # MCD-DTW(-SL) definition: "v2c" as the papers report it, "dubforge" without pymcd's quirks
    mcd_definition: McdDefinition = MCD_DEFINITION
    f0_method: Literal["dio", "harvest"] = "dio"
    # how F0 frames of generated and reference speech are paired for GPE/VDE/FFE
    f0_alignment: Literal["dtw", "direct"] = "dtw"
    gpe_threshold: float = Field(0.2, gt=0.0, lt=1.0)
    activity_detector: Literal["energy", "silero"] = "energy"
    # energy detector: frames within this many dB of the loudest frame count as speech
    energy_floor_db: float = Field(35.0, gt=0.0)
    # AV-Align: an audio peak matches a video peak closer than this many video frames
    av_align_window_frames: float = Field(1.0, gt=0.0)
    lse_vshift: int = Field(15, ge=1)
    # DNSMOS from the ONNX models bundled in speechmos; False -> DNSMOS is "not available"
    dnsmos: bool = True

    @field_validator("speaker_encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        if v not in SPEAKER_ENCODERS:
            raise ValueError(f"unknown speaker encoder {v!r}; choose from {SPEAKER_ENCODERS}")
        return v
