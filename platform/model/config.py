"""The typed model config: what a job YAML holds about the dubber (a `model:` section).

Frozen, unknown keys rejected. `presets.build_model(cfg)` turns it into plain arguments; the
model classes never see it. Importing this module does not import torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dubforge.schema import MEL_PROFILES, TASKS

PRESET_NAMES = ("tiny", "small", "base")  # presets.PRESETS holds the builders
TASK_NAMES = TASKS
SWAY_MAX = 2.0 / (math.pi - 2.0)  # F5-TTS: sway sampling stays monotonic for s in [-1, this]
# The one home of the dropout and guidance defaults: these sections and flow.FlowOptions /
# flow.Guidance read them. Nested dropout: P of training each MM-MovieDubber eq. 9 branch,
# (V, C, T), (phi, C, T), (phi, phi, T), (phi, phi, phi), so the null branch that eq. 9
# subtracts is learnt at 6 % instead of the 0.05^3 * 0.3 of independent drops.
BRANCH_PROBS = (0.80, 0.07, 0.07, 0.06)
REF_DROP = 0.3  # F5-TTS drops the audio prompt (our reference voice) at 30 %
GUIDANCE_SCALE = 2.0  # lambda_V = lambda_C = lambda_T


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpaceSection(_Section):
    name: Literal["mel", "codec"] = Field("mel", description="acoustic space the DiT generates")
    path: str | None = Field(
        None, description="codec: save_pretrained folder (required); mel: the vocoder's folder"
    )
    mel_profile: str = Field(
        "vocos_24k", description="mel: the profile the records' mel is in (schema.MEL_PROFILES)"
    )
    vocoder: Literal["hifigan", "vocos", "bigvgan", "griffin_lim"] | None = Field(
        None, description="mel: the vocoder kind at `path` (None: the flagged Griffin-Lim)"
    )
    codebooks: int | None = Field(
        None, ge=1, description="codec: codebooks per frame in the records (None: all)"
    )
    latent_scale: float | None = Field(
        None, gt=0, description="codec: latents are divided by it (None: estimated)"
    )
    griffin_lim_iters: int = Field(32, ge=1, description="mel without vocoder: iterations")

    @field_validator("mel_profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        if v not in MEL_PROFILES:
            raise ValueError(f"unknown mel profile {v!r}; choose from {sorted(MEL_PROFILES)}")
        return v

    @model_validator(mode="after")
    def _codec_needs_path(self) -> SpaceSection:
        if self.name == "codec" and not self.path:
            raise ValueError(
                "space.path is required for the codec space: a codec folder written by "
                "save_pretrained"
            )
        return self


class DropoutSection(_Section):
    """Nested condition dropout in training (DESIGN.md "Model"): one draw per sample picks the
    MM-MovieDubber eq. 9 branch it trains, so every branch guidance evaluates is learnt at a
    set rate. The null draw drops the reference voice too (F5-TTS drops audio prompt and text
    together); in the other draws the reference is dropped independently at `ref`."""

    full: float = Field(BRANCH_PROBS[0], ge=0, le=1, description="P(V, C, T): nothing dropped")
    no_video: float = Field(BRANCH_PROBS[1], ge=0, le=1, description="P(phi, C, T)")
    no_video_labels: float = Field(BRANCH_PROBS[2], ge=0, le=1, description="P(phi, phi, T)")
    null: float = Field(
        BRANCH_PROBS[3], ge=0, le=1, description="P(phi, phi, phi), reference dropped as well"
    )
    ref: float = Field(
        REF_DROP, ge=0, le=1, description="reference-voice dropout in the non-null draws"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_independent_rates(cls, data: object) -> object:
        old = sorted({"video", "labels", "text"} & set(data)) if isinstance(data, dict) else []
        if old:
            raise ValueError(
                f"dropout.{', dropout.'.join(old)}: independent per-condition rates were "
                "replaced by nested branch probabilities; set dropout.full, dropout.no_video, "
                "dropout.no_video_labels, dropout.null (summing to 1) and dropout.ref, e.g. "
                "{full: 0.8, no_video: 0.07, no_video_labels: 0.07, null: 0.06, ref: 0.3}"
            )
        return data

    @model_validator(mode="after")
    def _sums_to_one(self) -> DropoutSection:
        total = sum(self.branch_probs)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"dropout.full + dropout.no_video + dropout.no_video_labels + dropout.null = "
                f"{total:g}; these branch probabilities must sum to 1, e.g. 0.8, 0.07, 0.07, 0.06"
            )
        return self

    @property
    def branch_probs(self) -> tuple[float, float, float, float]:
        """(full, no_video, no_video_labels, null): the order of flow.BRANCHES."""
        return (self.full, self.no_video, self.no_video_labels, self.null)


class LossSection(_Section):
    dur_weight: float = Field(0.1, ge=0, description="weight of L_dur (MM-MovieDubber eq. 7)")
    sigma: float = Field(0.0, ge=0, lt=1, description="OT-path sigma_min")
    span_frac: tuple[float, float] = Field(
        (0.7, 1.0), description="fraction of the speech stream to infill in training"
    )
    activity_db: float = Field(40.0, gt=0, description="speech activity: within this of peak")

    @field_validator("span_frac")
    @classmethod
    def _frac(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("span_frac must be (lo, hi) with 0 < lo <= hi <= 1, e.g. [0.7, 1.0]")
        return v


class GuidanceSection(_Section):
    """Multi-condition CFG scales (MM-MovieDubber eq. 9). Its null branch drops the reference
    voice as well, as training's null draw does; equal scales need only two branches."""

    enabled: bool = True
    video: float = Field(GUIDANCE_SCALE, description="lambda_V")
    labels: float = Field(GUIDANCE_SCALE, description="lambda_C")
    text: float = Field(GUIDANCE_SCALE, description="lambda_T")


class SamplerSection(_Section):
    nfe: int = Field(32, ge=1, description="velocity evaluations (midpoint: 2 per step)")
    method: Literal["euler", "midpoint"] = "euler"
    sway: float = Field(-1.0, ge=-1.0, le=SWAY_MAX, description="sway sampling coefficient")
    cfg: GuidanceSection = GuidanceSection()

    @model_validator(mode="after")
    def _even_midpoint(self) -> SamplerSection:
        if self.method == "midpoint" and self.nfe % 2:
            raise ValueError(f"sampler.nfe={self.nfe}: midpoint needs an even nfe (2 per step)")
        return self


class ModelConfig(_Section):
    """The dubber: size preset, acoustic space, tasks, training dropout / losses, sampler.

    `activation_checkpointing` recomputes each DiT block in the backward pass instead of
    storing its activations (None: the preset's default, on for `base` only). On GPUs, training
    on variable-length batches should also run with
    `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` in the workers' environment: every batch
    has another shape, and without expandable segments the caching allocator fragments until
    an allocation fails with memory free but split into blocks of the wrong sizes."""

    preset: str = Field("tiny", description=f"one of {', '.join(PRESET_NAMES)}")
    activation_checkpointing: bool | None = Field(
        None,
        description="recompute DiT blocks in backward to save memory (None: preset default, "
        "on for base)",
    )
    space: SpaceSection = SpaceSection()
    tasks: tuple[str, ...] = Field(TASK_NAMES, description="tasks samples are drawn from")
    dropout: DropoutSection = DropoutSection()
    loss: LossSection = LossSection()
    sampler: SamplerSection = SamplerSection()

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESET_NAMES:
            raise ValueError(f"unknown preset {v!r}; choose from {', '.join(PRESET_NAMES)}")
        return v

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if t not in TASK_NAMES]
        if unknown or not v:
            raise ValueError(f"tasks must be a non-empty list from {list(TASK_NAMES)}")
        return v


def diff_fields(a: BaseModel, b: BaseModel) -> list[str]:
    """Dotted names of the fields whose values differ between two configs of one type."""

    def flat(d: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
