"""The typed config of the `evaluate` job (jobs/evaluate.yaml): which export, which clips, which
protocol, which models score them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from dubforge.config import JobConfig
from dubforge.eval.config import EvalConfig


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GuidanceScales(_Section):
    """MM-MovieDubber eq. 9 scales: video (lambda_V), labels (lambda_C), text (lambda_T)."""

    video: float = Field(ge=0, le=20)
    labels: float = Field(ge=0, le=20)
    text: float = Field(ge=0, le=20)


class VocoderSection(_Section):
    """A vocoder to decode mel exports with instead of the one the export names."""

    kind: Literal["hifigan", "vocos", "bigvgan", "griffin_lim"]
    path: str | None = Field(None, description="local folder or file (none for griffin_lim)")


class EvaluateConfig(JobConfig):
    """Generate with an exported dubber for held-out clips and score them as the papers do.

    Protocols (DeepDubber-V1 / MM-MovieDubber / V2C): `setting2` (default) takes the reference
    voice from another clip of the same speaker and generates the whole target clip from its
    script, lips, face and labels; `setting1` takes the target's own audio as the reference.
    WER compares the whole generated clip with its script."""

    entrypoint: ClassVar[str] = "dubforge.eval.run:main"

    job: Literal["evaluate"] = "evaluate"
    checkpoint: str = Field(..., description="an exported checkpoint folder")
    shards: str = Field(..., description="ingest's shards/ folder (holding train/ val/ test/)")
    split: Literal["val", "test"] = Field("val", description="never train: the model saw it")
    protocol: Literal["setting1", "setting2"] = "setting2"
    clips: int = Field(8, ge=1, description="target clips to evaluate")
    seed: int = 0
    nfe: int | None = Field(16, ge=1, description="velocity evaluations (null: the export's)")
    method: Literal["euler", "midpoint"] | None = Field(None, description="null: the export's")
    sway: float | None = Field(None, ge=-1, le=1, description="null: the export's")
    guidance: GuidanceScales | Literal["checkpoint", "none"] = Field(
        "checkpoint", description="eq. 9 scales, the export's defaults, or none (no CFG)"
    )
    vocoder: VocoderSection | None = None
    metrics: EvalConfig = EvalConfig()
    out: str = Field("runs/eval", description="report folder")
    samples: int = Field(3, ge=0, description="clips whose audio and spectrograms are saved")
    batch_size: int = Field(4, ge=1)
    device: str = "cpu"
