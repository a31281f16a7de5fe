"""The typed config of the `serve` job (jobs/serve.yaml): which export, where it listens, how it
scales and batches, what it accepts, and who may call it."""

from __future__ import annotations

import ipaddress
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dubforge.config import JobConfig
from dubforge.ingest.config import FacesSection
from dubforge.schema import FPS
from dubforge.serve.inputs import InputSection

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AutoscalingSection(_Section):
    """Ray Serve `autoscaling_config` of the model deployment."""

    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="requests per replica the autoscaler aims for"
    )
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float = Field(2.0, gt=0, description="how often replicas report load")
    look_back_period_s: float = Field(10.0, gt=0, description="window the load is averaged over")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSection:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas={self.max_replicas} < min_replicas={self.min_replicas}")
        return self


class BatchingSection(_Section):
    """`@serve.batch` of the model deployment: concurrent requests, one padded forward."""

    max_batch_size: int = Field(8, ge=1, le=256, description="1 turns batching off")
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=10)


class LimitsSection(_Section):
    """Request limits; the media limits (length, bytes, size) are under `inputs`."""

    max_text_chars: int = Field(1000, ge=1)
    max_nfe: int = Field(64, ge=1, le=128, description="velocity evaluations a request may ask for")
    request_timeout_s: float = Field(120.0, gt=0, description="answer 504 after this")
    max_ongoing_requests: int = Field(
        8, ge=1, description="requests a model replica holds at once (a batch fills from these)"
    )
    max_queued_requests: int = Field(
        32, ge=0, description="requests waiting for a model replica; more are answered 429"
    )
    prepare_concurrency: int = Field(
        2, ge=1, description="uploads an ingress replica decodes and tracks at once"
    )
    prepared_cache: int = Field(
        4,
        ge=0,
        description="prepared clips an ingress replica keeps (a clip sent with "
        "several lines is prepared once); 0 keeps none",
    )


class AuthSection(_Section):
    """Bearer token on every route but /v1/health. The token is read at replica start from
    `token_env`, else from `token_file`; comparison is constant-time."""

    mode: Literal["token", "none"] = Field(
        "token", description="none: no token at all, only for a proxy bound to loopback"
    )
    token_env: str = "DUBFORGE_API_TOKEN"
    token_file: str | None = Field(None, description="file holding the token (mode 0600)")


class InputsSection(InputSection):
    """How uploads become model inputs (media limits and ingest's own faces, separator and
    timeouts sections), and the storage URIs a request may name instead of uploading."""

    allowed_uri_prefixes: tuple[str, ...] = Field(
        (), description="storage URI prefixes a request may name instead of uploading"
    )
    faces: FacesSection = FacesSection(face_fps=25)


class ResourcesSection(_Section):
    device: str = Field("cpu", description="torch device of the model replicas (cpu, cuda)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica")
    model_cpus: float = Field(1.0, gt=0, description="CPUs per model replica")
    ingress_cpus: float = Field(0.5, gt=0, description="CPUs per ingress replica")
    ingress_replicas: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="torch threads per model replica")


class ServeConfig(JobConfig):
    """Ray Serve hosting an exported dubber behind an authenticated HTTP API.

    `model` is an export folder, a storage URI (file://, s3://, gs://), an MLflow registry
    reference (`models:/dubber/3`, `models:/dubber@champion`), or `random:tiny` /
    `random:small` (random weights, for smoke and load tests)."""

    entrypoint: ClassVar[str] = "dubforge.serve.run:main"

    job: Literal["serve"] = "serve"
    name: str = Field("dubforge", pattern=r"^[A-Za-z0-9_-]+$", description="Serve application")
    model: str = Field("random:tiny", description="export folder, URI, models:/..., random:PRESET")
    route_prefix: str = Field("/", pattern=r"^/[A-Za-z0-9_/-]*$")
    host: str = Field("127.0.0.1", description="the proxy's bind address (loopback by default)")
    port: int = Field(8000, ge=1, le=65535)
    cache_dir: str = Field("runs/serve/cache", description="where remote exports are copied")
    autoscaling: AutoscalingSection = AutoscalingSection()
    batching: BatchingSection = BatchingSection()
    limits: LimitsSection = LimitsSection()
    auth: AuthSection = AuthSection()
    inputs: InputsSection = InputsSection()
    resources: ResourcesSection = ResourcesSection()

    @model_validator(mode="after")
    def _auth_on_open_hosts(self) -> ServeConfig:
        if self.auth.mode == "none" and not _is_loopback(self.host):
            raise ValueError(
                f"auth.mode=none with host={self.host}: a service without a token may only "
                "listen on loopback (host=127.0.0.1)"
            )
        if FPS % self.inputs.faces.face_fps:
            raise ValueError(
                f"inputs.faces.face_fps={self.inputs.faces.face_fps} must divide {FPS} (the "
                "model reads face crops at a whole-frame stride)"
            )
        if self.resources.num_gpus > 0 and not self.resources.device.startswith("cuda"):
            raise ValueError("resources.num_gpus > 0 needs resources.device=cuda")
        return self


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
