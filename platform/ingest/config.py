"""The typed config of the `ingest` job (jobs/ingest.yaml)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dubforge.config import JobConfig
from dubforge.schema import MEL_PROFILES, SPLITS, TASK_STREAMS, VIDEO_TASKS


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
    num_gpus: float = Field(0.0, ge=0, description="GPUs per separator actor (>0: on CUDA)")
    batch_size: int = Field(
        1, ge=1, description="clips per call of a separator actor (more keeps a GPU busier)"
    )


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
    mel: str | None = Field(
        None,
        description=f"also store log-mel per stem in this vocoder profile ({sorted(MEL_PROFILES)})",
    )
    actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per codec actor")
    device: str | None = Field(
        None, description='torch device of the codec (None: "cuda" when num_gpus > 0, else "cpu")'
    )
    batch_size: int = Field(
        4, ge=1, description="clips per codec call: all their stems are encoded in one batch"
    )

    @field_validator("mel")
    @classmethod
    def _known_profile(cls, v: str | None) -> str | None:
        if v is not None and v not in MEL_PROFILES:
            raise ValueError(f"unknown mel profile {v!r}; choose from {sorted(MEL_PROFILES)}")
        return v

    @model_validator(mode="after")
    def _device_has_gpus(self) -> CodecSection:
        # Ray hides every GPU from an actor that asked for none, so CUDA would not be found there
        if self.device is not None and self.device.startswith("cuda") and self.num_gpus == 0:
            raise ValueError(
                f"codec.device={self.device!r} with codec.num_gpus=0: Ray gives the codec actors "
                "no GPU; set codec.num_gpus (e.g. 1) or leave codec.device unset"
            )
        return self

    @property
    def torch_device(self) -> str:
        """The device the codec runs on: `device`, else "cuda" when the actors get GPUs."""
        if self.device is not None:
            return self.device
        return "cuda" if self.num_gpus > 0 else "cpu"


class TimeoutSection(_Section):
    """Limits on every external process (ffprobe, ffmpeg): past them the input or clip is
    rejected as `timeout` instead of hanging the job."""

    probe: float = Field(30.0, gt=0, description="seconds for ffprobe of one file")
    decode: float = Field(60.0, gt=0, description="seconds for one decode, plus the next")
    decode_per_second: float = Field(
        1.0, ge=0, description="extra decode seconds per second of media"
    )


class SplitSection(_Section):
    """Held-out splits by a hash of each movie id / speech speaker (see ingest/split.py)."""

    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.9, "val": 0.05, "test": 0.05}
    )
    pinned: dict[str, list[str]] = Field(
        default_factory=dict, description="split -> movie ids or speaker names always put there"
    )
    salt: str = Field("", description="changes every assignment at once (a new shuffle)")

    @field_validator("fractions", "pinned")
    @classmethod
    def _known_splits(cls, v: dict) -> dict:
        unknown = [k for k in v if k not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")
        return v

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {v}")
        return v


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
    speech_tasks: tuple[str, ...] = Field(
        ("tts",), description="tasks clips of speech corpora and audio-only media serve"
    )
    energy_threshold_db: float = Field(-40.0, le=0)
    segment: SegmentSection = SegmentSection()
    separator: SeparatorSection = SeparatorSection()
    faces: FacesSection = FacesSection()
    codec: CodecSection
    shards: ShardSection = ShardSection()
    timeouts: TimeoutSection = TimeoutSection()
    split: SplitSection = SplitSection()
    max_error_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="stop the job when more than this fraction of units fail with unexpected "
        "errors (a bug, not bad media)",
    )
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
        unknown = [t for t in v if t not in TASK_STREAMS]
        if unknown or not v:
            raise ValueError(f"tasks must be a non-empty list from {sorted(TASK_STREAMS)}")
        return v

    @field_validator("speech_tasks")
    @classmethod
    def _no_video(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        video = [t for t in v if t in VIDEO_TASKS]
        if video:
            raise ValueError(f"speech and audio-only clips have no video: {video} need it")
        return v
