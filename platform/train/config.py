"""The curriculum job config (`job: curriculum`): stages, data sources, DeepSpeed, scaling,
checkpoints and tracking. Validation happens on the driver, before Ray or any worker starts, and
every error names its field (`stages.1.lr: ...`).

Batching: a micro-batch is filled up to `data.frame_budget` latent frames of padded length
(samples x longest sample x streams, F5-TTS's frame-budget batching), so its sample count varies.
DeepSpeed counts micro-batches in samples; here it is given `data.max_samples` as its nominal
`train_micro_batch_size_per_gpu` (an upper bound it only uses for its own logging: we feed
batches ourselves) and `deepspeed.grad_accum` as `gradient_accumulation_steps`. One optimizer
step = `grad_accum` micro-batches per worker, each worker's micro-batch loss weighted equally.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dubforge.config import JobConfig
from dubforge.model.config import TASK_NAMES, DropoutSection, ModelConfig

# module names of the Dubber that a stage can freeze (prefixes of parameter names)
MODULES = (
    "text_encoder",
    "lip_encoder",
    "face_encoder",
    "label_encoder",
    "null_token",
    "dur_head",
    "dit",
    "dit.time",
    "dit.inp",
    "dit.stream",
    "dit.conv_pos",
    "dit.blocks",
    "dit.final",
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Section):
    """One data source of a stage: shard files (a glob relative to the job's `shards` root, or
    a URI), or `replay` of an earlier stage's sources; `weight` is its share of the stage's
    samples (relative to the other sources)."""

    shards: str | None = Field(
        None, description="glob of .tar shards under <shards>/<split>/, e.g. movie_*.tar"
    )
    split: Literal["train", "val", "test"] = Field(
        "train", description="the split folder the glob is under (ingest writes shards/<split>/)"
    )
    replay: str | None = Field(None, description="name of an earlier stage whose data to replay")
    weight: float = Field(1.0, gt=0, description="relative share of samples")

    @model_validator(mode="after")
    def _one_of(self) -> Source:
        if (self.shards is None) == (self.replay is None):
            raise ValueError("a source sets exactly one of `shards` (a glob) or `replay` (a stage)")
        return self


class LossOverride(_Section):
    dur_weight: float | None = Field(None, ge=0, description="weight of L_dur in this stage")


class Stage(_Section):
    """One curriculum stage."""

    name: str = Field(description="unique stage name, used in paths and MLflow run names")
    tasks: dict[str, float] = Field(
        description="task -> weight, e.g. {tts: 1} or {v2st: 3, v2s: 1}"
    )
    data: tuple[Source, ...] = Field(description="data sources (at least one)")
    steps: int = Field(gt=0, description="optimizer steps of this stage")
    lr: tuple[float, float] = Field(
        (2e-6, 2e-4), description="[min, max]: warm-up min -> max, cosine back to min"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    freeze: tuple[str, ...] = Field((), description=f"modules kept fixed; from {list(MODULES)}")
    dropout: DropoutSection | None = Field(None, description="condition dropout (None: model's)")
    loss: LossOverride = LossOverride()
    init: str | None = Field(
        None, description="export folder to start from (None: the previous stage's export)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"stage name {v!r} must be non-empty letters, digits, '-' or '_'")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = [t for t in v if t not in TASK_NAMES]
        if unknown or not v:
            raise ValueError(f"tasks must map tasks from {list(TASK_NAMES)} to weights; got {v}")
        if any(w <= 0 for w in v.values()):
            raise ValueError(f"task weights must be > 0; got {v}")
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v: tuple[Source, ...]) -> tuple[Source, ...]:
        if not v:
            raise ValueError("a stage needs at least one data source")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] < 1:
            raise ValueError(f"lr must be [min, max] with 0 < min <= max < 1; got {list(v)}")
        return v

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in v if m not in MODULES]
        if unknown:
            raise ValueError(f"unknown modules {unknown}; choose from {list(MODULES)}")
        return v

    @model_validator(mode="after")
    def _warmup(self) -> Stage:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})"
            )
        return self


class DeepSpeedSection(_Section):
    zero_stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage")
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="bf16 on GPU; fp32 or bf16 on CPU"
    )
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step and worker")
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clip (0: none)")
    offload_optimizer: bool = Field(False, description="optimizer state on CPU (ZeRO-2/3)")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-9, gt=0)
    weight_decay: float = Field(0.01, ge=0)


class DataSection(_Section):
    frame_budget: int = Field(
        38400, ge=1, description="padded latent frames per micro-batch and worker (F5-TTS)"
    )
    max_samples: int = Field(64, ge=1, description="samples per micro-batch at most")
    buckets: int = Field(8, ge=1, description="length buckets (geometric edges)")
    max_frames: int = Field(3000, ge=2, description="longest clip in latent frames; longer cut")
    shuffle_buffer: int = Field(256, ge=0, description="rows shuffled locally per worker")
    max_bad_shards: float = Field(
        0.1, ge=0, le=1, description="fraction of a stage's shards allowed to be corrupt/skipped"
    )
    max_bad_records: float = Field(
        0.05, ge=0, le=1, description="fraction of records allowed to be rejected per epoch"
    )
    max_lost_samples: int = Field(
        1000,
        ge=0,
        description="samples a stage may lose to shards that end early (a corrupt tar header "
        "mid-shard reads as a clean end: counted against each shard's index)",
    )


class ScalingSection(_Section):
    workers: int = Field(2, ge=1, description="training workers (one per GPU)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs a worker holds; fractional on small CPU boxes (FACTS)"
    )
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    threads_per_worker: int = Field(1, ge=1, description="torch threads per CPU worker")


class CheckpointSection(_Section):
    every: int = Field(500, ge=1, description="steps between checkpoints (and at stage end)")
    keep: int = Field(2, ge=1, description="checkpoints kept per stage")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the checkpoint")


class TrackingSection(_Section):
    experiment: str = "dubforge-curriculum"
    log_every: int = Field(10, ge=1, description="steps between metric logs")
    validate_every: int = Field(
        1000, ge=1, description="steps between validation generations (and at stage end)"
    )
    validation_clips: int = Field(2, ge=1, description="clips generated per validation")
    validation_nfe: int = Field(16, ge=1)
    validation_time_s: float = Field(
        300.0,
        gt=0,
        le=1200,
        description="seconds a validation may take; the ranks wait in a collective meanwhile, "
        "so it stays below the process group's timeout (Ray Train's 1800 s)",
    )
    register_as: str | None = Field(
        "dubber", description="registered model name of the final export (None: not registered)"
    )


class CurriculumConfig(JobConfig):
    """`dubforge train jobs/curriculum.yaml [key=value ...]`."""

    entrypoint = "dubforge.train.curriculum:main"

    job: Literal["curriculum"] = "curriculum"
    name: str = Field("dubber", description="run name: storage/<name>/..., MLflow parent run")
    shards: str = Field(description="root (folder or URI) that the stages' shard globs are under")
    storage: str | None = Field(
        None, description="checkpoints (folder or URI shared by all nodes); None: <workspace>/train"
    )
    model: ModelConfig = ModelConfig()
    stages: tuple[Stage, ...] = Field(description="ordered stages")
    run_stages: tuple[str, ...] | None = Field(
        None, description="run only these stages (the others' exports must exist)"
    )
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    data: DataSection = DataSection()
    scaling: ScalingSection = ScalingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    tracking: TrackingSection = TrackingSection()
    seed: int = 0

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: tuple[Stage, ...]) -> tuple[Stage, ...]:
        if not v:
            raise ValueError("the curriculum needs at least one stage")
        seen: list[str] = []
        for i, stage in enumerate(v):
            if stage.name in seen:
                raise ValueError(f"stage {i}: name {stage.name!r} is used twice")
            for src in stage.data:
                if src.replay is not None and src.replay not in seen:
                    raise ValueError(
                        f"stage {stage.name!r} replays {src.replay!r}, which is not an earlier "
                        f"stage (earlier: {seen})"
                    )
            seen.append(stage.name)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CurriculumConfig:
        names = [s.name for s in self.stages]
        for name in self.run_stages or ():
            if name not in names:
                raise ValueError(f"run_stages: {name!r} is not a stage; stages are {names}")
        for stage in self.stages:
            extra = [t for t in stage.tasks if t not in self.model.tasks]
            if extra:
                raise ValueError(
                    f"stage {stage.name!r} trains tasks {extra} that model.tasks "
                    f"{list(self.model.tasks)} leaves out"
                )
        if self.deepspeed.offload_optimizer and self.deepspeed.zero_stage == 1:
            raise ValueError("deepspeed.offload_optimizer needs zero_stage 2 or 3")
        return self

    def selected(self) -> list[Stage]:
        """The stages this run executes, in curriculum order."""
        keep = set(self.run_stages or [s.name for s in self.stages])
        return [s for s in self.stages if s.name in keep]

    def previous(self, stage: Stage) -> Stage | None:
        i = [s.name for s in self.stages].index(stage.name)
        return self.stages[i - 1] if i else None
