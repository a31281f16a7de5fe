"""The typed config of the `ingest` job (jobs/ingest.yaml)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dubforge.config import JobConfig
from dubforge.ingest.energy import TASK_STEMS


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SegmentSection(_Section):
    min_duration: float = Field(1.0, gt=0, description="shorter clips are rejected (s)")
    max_duration: float = Field(12.0, gt=0, description="longer cues are split (s)")
    merge_gap: float = Field(0.4, ge=0, description="merge short neighbours closer than this (s)")
    pad: float = Field(0.15, ge=0, description="seconds added on each side of a clip")
    fps: int = Field(25, ge=1, description="clip edges snap to this video frame rate")


class SeparatorSection(_Section):
    model_dir: str | None = Field(None, description="local folder with the RoFormer model")
    model_filename: str = Field("mel_band_roformer.ckpt", description="model file in model_dir")
    use_stems: bool = Field(True, description="use delivered dialogue/M&E stems when present")
    actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0)


class FacesSection(_Section):
    enabled: bool = True
    face_size: int = Field(224, ge=32)
    lip_size: int = Field(96, ge=32)
    face_fps: int = Field(5, ge=1, le=25, description="face crops kept per second (lips: 25)")
    max_side: int = Field(640, ge=0, description="downscale frames for detection (0: never)")
    min_coverage: float = Field(
        0.5, ge=0, le=1, description="face in fewer frames: the clip gets no lips/face arrays"
    )
    keep_faceless: bool = Field(
        True,
        description="keep clips below min_coverage without video arrays (narration, V2A, TTS); "
        "false rejects them as low_face_coverage (lip-sync-only datasets)",
    )
    actors: int = Field(1, ge=1)


class CodecSection(_Section):
    name_or_path: str = Field(..., description="transformers codec: local folder or name")
    bandwidth: float | None = Field(6.0, description="EnCodec target kbps (8 codebooks at 6)")
    mel: bool = Field(False, description="also store 100-bin log-mel per stem (24 kHz)")
    actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0)


class ShardSection(_Section):
    max_bytes: int = Field(256 * 2**20, ge=2**16)
    max_samples: int = Field(1000, ge=1)


class IngestConfig(JobConfig):
    """Raw movies and speech corpora -> WebDataset shards + manifest.parquet + summary.json."""

    entrypoint: ClassVar[str] = "dubforge.ingest.pipeline:main"

    job: Literal["ingest"] = "ingest"
    input: list[str] = Field(..., description="input roots, comma-separated (folders or URIs)")
    output: str = Field(..., description="output folder")
    movie_tasks: tuple[str, ...] = Field(("v2st",), description="tasks movie clips serve")
    speech_tasks: tuple[str, ...] = Field(("tts",), description="tasks speech clips serve")
    energy_threshold_db: float = Field(-40.0, le=0)
    segment: SegmentSection = SegmentSection()
    separator: SeparatorSection = SeparatorSection()
    faces: FacesSection = FacesSection()
    codec: CodecSection
    shards: ShardSection = ShardSection()
    speech_unit: int = Field(64, ge=1, description="speech utterances per unit of work")
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a local Ray (None: the machine's, at least 4)"
    )

    def min_cpus(self) -> int:
        """CPUs the pipeline needs to make progress: each actor of each pool holds one, plus one
        for the decode actor and one for the stateless tasks between them."""
        actors = self.codec.actors + (self.faces.actors if self.faces.enabled else 0)
        actors += self.separator.actors if self.separator.model_dir else 0
        return actors + 2

    @model_validator(mode="after")
    def _enough_cpus(self) -> IngestConfig:
        if self.num_cpus is not None and self.num_cpus < self.min_cpus():
            raise ValueError(
                f"num_cpus={self.num_cpus} cannot hold the actor pools (codec, faces, separator "
                f"actors + 2 = {self.min_cpus()}): raise num_cpus or lower the *.actors counts"
            )
        return self

    @field_validator("input", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            return [r.strip() for r in v.split(",") if r.strip()]
        return v

    @field_validator("movie_tasks", "speech_tasks")
    @classmethod
    def _known_tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if t not in TASK_STEMS]
        if unknown or not v:
            raise ValueError(f"tasks must be a non-empty list from {sorted(TASK_STEMS)}")
        return v
