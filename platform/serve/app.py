"""The dubbing service on Ray Serve: a FastAPI ingress (`DubbingAPI`) in front of the model
deployment (`DubberModel`), bound by `build_app` from a `ServeConfig`.

    DubbingAPI   token check, size limits, strict form parsing, uploads into a private per-request
                 folder, input preparation with ingest's own stages (probe, 25 fps decode, face
                 and lip tracking, separation), WAV or MP4 answers, JSON errors.
    DubberModel  the export (weights, space, vocoder) resolved once per replica; `@serve.batch`
                 packs concurrent requests into padded, masked forwards; autoscaled on ongoing
                 requests; its queue bound answers 429.

`build_app` is the Serve application builder that `dubforge serve`, `serve run`, `serve deploy`
and a KubeRay RayService all import (`dubforge.serve.app:build_app`).
"""

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from dubforge.serve.config import ServeConfig
from dubforge.serve.forms import FormError, FormLimits, read_form
from dubforge.serve.inputs import InputSection
from dubforge.serve.request import FILE_FIELDS, TEXT_FIELDS, DubRequest, RequestError, parse

log = logging.getLogger("dubforge.serve")

HEALTH = "/v1/health"
RANDOM_HEADER = "X-Dubforge-Random-Weights"
MAX_HEADER_BYTES = 16384


class ApiError(Exception):
    """An answer other than 200: `status`, a short `error` code and a `detail` sentence."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def read_token(cfg: ServeConfig) -> str | None:
    """The API token from `auth.token_env`, else `auth.token_file`; None for `auth.mode=none`.
    Refuses to start without one, or with one too short to be a secret."""
    if cfg.auth.mode == "none":
        return None
    token = os.environ.get(cfg.auth.token_env, "").strip()
    if not token and cfg.auth.token_file:
        path = Path(cfg.auth.token_file)
        if not path.is_file():
            raise RuntimeError(f"auth.token_file {path} does not exist")
        token = path.read_text().strip()
    if not token:
        raise RuntimeError(
            f"no API token: set {cfg.auth.token_env} or auth.token_file (or auth.mode=none for "
            "a loopback-only service)"
        )
    if len(token) < 16:
        raise RuntimeError("the API token must have at least 16 characters")
    return token


class Guard:
    """ASGI middleware in front of every route: the bearer token (all but /v1/health, /docs
    included) and the body size, refused from the Content-Length header before any body is read
    and, for a chunked body, as soon as the limit is crossed."""

    settings: dict[str, Any] = {"token": None, "max_body": 1 << 20, "ready": False}

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if not path.endswith(HEALTH):
            refusal = self._refuse(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refuse(self, scope: dict) -> Response | None:
        raw = scope.get("headers", [])
        if sum(len(k) + len(v) for k, v in raw) > MAX_HEADER_BYTES:
            return error_response(
                431, "headers_too_large", f"request headers exceed {MAX_HEADER_BYTES} bytes"
            )
        headers = {k.decode("latin-1").lower(): v for k, v in raw}
        token = self.settings["token"]
        if not self.settings["ready"]:
            return error_response(503, "not_ready", "the service is starting")
        if token is not None:
            given = headers.get("authorization", b"")
            scheme, _, value = given.partition(b" ")
            expected = token.encode()
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), expected):
                return error_response(
                    401,
                    "unauthorized",
                    "send Authorization: Bearer <token>",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return error_response(400, "bad_request", "Content-Length is not a number")
            if n > self.settings["max_body"]:
                return error_response(
                    413,
                    "too_large",
                    f"the request body is larger than {self.settings['max_body']} bytes",
                )
        return None


api = FastAPI(
    title="dubforge dubbing API",
    description="Dub a video clip with a new line in a reference voice. Every route but "
    "/v1/health needs `Authorization: Bearer <token>`.",
    version="1",
    redoc_url=None,
)
api.add_middleware(Guard)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(422, "invalid", f"{where}: {first.get('msg', 'invalid request')}")


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, "http_error", str(exc.detail))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, "internal", "the service failed on this request; it is logged")


_DUB_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["text"],
                "properties": {
                    "video": {"type": "string", "format": "binary", "description": "the clip"},
                    "video_uri": {"type": "string", "description": "allow-listed storage URI"},
                    "text": {"type": "string", "description": "the new line"},
                    "reference": {"type": "string", "format": "binary", "description": "voice"},
                    "reference_uri": {"type": "string"},
                    "reference_text": {"type": "string", "description": "the reference's words"},
                    "labels": {
                        "type": "string",
                        "description": "JSON: scene_type, gender, age, emotion",
                    },
                    "guidance": {
                        "type": "string",
                        "description": 'JSON {"video","labels","text"} or "none"',
                    },
                    "nfe": {"type": "integer"},
                    "method": {"type": "string", "enum": ["euler", "midpoint"]},
                    "sway": {"type": "number"},
                    "seed": {"type": "integer"},
                    "format": {"type": "string", "enum": ["wav", "mp4"]},
                },
            }
        }
    },
}


# Helpers of the routes come before the ingress: `serve.ingress` freezes a copy of the
# FastAPI app (and the globals its routes read) when the class is decorated.
class SingleFlight:
    """An LRU of prepared uploads by content hash, where concurrent requests for the same key
    wait for one computation: a clip sent with several alternative lines (takes) is probed,
    decoded and face-tracked once, and its requests reach the model together."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.pending: dict[str, asyncio.Future] = {}

    async def get(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        if key in self.pending:
            return await asyncio.shield(self.pending[key])
        future = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            value = await make()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters get it, nobody else is told
            raise
        finally:
            del self.pending[key]
        future.set_result(value)
        if self.size:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


@serve.deployment(name="DubberModel")
class DubberModel:
    """The export on this replica's device; `dub` requests are batched into padded forwards."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from dubforge.serve.generate import Generator
        from dubforge.serve.source import resolve

        cfg = ServeConfig.model_validate(config)
        torch.set_num_threads(cfg.resources.threads)
        self.cfg = cfg
        resolved = resolve(cfg.model, Path(cfg.cache_dir), device=cfg.resources.device)
        self.generator = Generator(resolved.checkpoint, resolved.space, device=cfg.resources.device)
        self.meta = {
            **self.generator.info,
            "name": resolved.name,
            "version": resolved.version,
            "source": cfg.model,
            "run_id": resolved.run_id,
            "random_weights": resolved.random_weights,
            "sample_rate": self.generator.sample_rate,
        }
        self.requests = 0
        self.batch_sizes: list[int] = []
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.dub_batch.set_max_batch_size(cfg.batching.max_batch_size)
        self.dub_batch.set_batch_wait_timeout_s(cfg.batching.batch_wait_timeout_s)

    async def info(self) -> dict[str, Any]:
        return self.meta

    async def stats(self) -> dict[str, Any]:
        """Requests answered and model calls made (fewer calls than requests: batching)."""
        return {
            "requests": self.requests,
            "calls": self.generator.calls,
            "batch_sizes": list(self.batch_sizes),
            "pid": os.getpid(),
        }

    async def dub(self, line: dict[str, Any]) -> dict[str, Any]:
        """One prepared line -> {"wave": float32 samples, "sample_rate", "model": meta};
        a line the model refuses -> {"error": detail}."""
        return await self.dub_batch(line)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def dub_batch(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._generate, lines)

    def _generate(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from dubforge.serve.generate import check_input

        self.requests += len(lines)
        self.batch_sizes.append(len(lines))
        batch = f"{self.replica}-{len(self.batch_sizes)}/{len(lines)}"
        out: list[dict[str, Any] | None] = [None] * len(lines)
        ok, inputs = [], []
        for i, line in enumerate(lines):
            try:
                inp = self._input(line)
                check_input(inp, self.cfg.inputs.max_clip_seconds)
            except ValueError as e:
                out[i] = {"error": str(e)}
                continue
            ok.append(i)
            inputs.append(inp)
        if inputs:
            waves = self.generator.generate(inputs)
            for i, wave in zip(ok, waves, strict=True):
                out[i] = {
                    "wave": wave,
                    "sample_rate": self.generator.sample_rate,
                    "model": self._short_meta(),
                    "batch": batch,
                }
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    def _short_meta(self) -> dict[str, Any]:
        keys = ("name", "version", "random_weights", "preset")
        return {k: self.meta.get(k) for k in keys}

    def _input(self, line: dict[str, Any]) -> Any:
        from dubforge.model.flow import Guidance
        from dubforge.serve.generate import DubInput

        base = self.generator.defaults()
        g = line["guidance"]
        if g is None:
            guidance = base.guidance
        elif g == "none":
            guidance = None
        else:
            guidance = Guidance(video=g[0], labels=g[1], text=g[2])
        settings = dataclasses.replace(
            base,
            nfe=line["nfe"] if line["nfe"] is not None else base.nfe,
            method=line["method"] or base.method,
            sway=line["sway"] if line["sway"] is not None else base.sway,
            guidance=guidance,
            seed=line["seed"],
        )
        return DubInput(
            text=line["text"],
            duration=line["duration"],
            lips=line["lips"],
            face=line["face"],
            face_fps=line["face_fps"],
            labels=line["labels"],
            reference=line["reference"],
            reference_rate=line["reference_rate"],
            reference_text=line["reference_text"],
            settings=settings,
        )


@serve.deployment(name="DubbingAPI")
@serve.ingress(api)
class DubbingAPI:
    """HTTP in front of DubberModel: checks, prepares and answers."""

    def __init__(self, model: DeploymentHandle, config: dict[str, Any]) -> None:
        cfg = ServeConfig.model_validate(config)
        self.cfg, self.model = cfg, model
        lim, inputs = cfg.limits, cfg.inputs
        body = inputs.max_video_bytes + inputs.max_reference_bytes + 2**20
        Guard.settings.update(token=read_token(cfg), max_body=body)
        self.form_limits = FormLimits(
            text_fields=TEXT_FIELDS,
            file_fields=FILE_FIELDS,
            max_field_bytes=max(4 * lim.max_text_chars, 4096),
            max_file_bytes=max(inputs.max_video_bytes, inputs.max_reference_bytes),
            max_body_bytes=body,
        )
        self.prepare_slots = asyncio.Semaphore(lim.prepare_concurrency)
        self.clips = SingleFlight(lim.prepared_cache)
        self.stems = SingleFlight(lim.prepared_cache)
        self._preparer: Any = None
        self._preparer_lock = asyncio.Lock()
        Guard.settings["ready"] = True

    async def preparer(self) -> Any:
        """Ingest's stages for uploads, built at the first request: it needs the model's
        sample rate, which the model deployment reports."""
        from dubforge.serve.inputs import ClipPreparer

        async with self._preparer_lock:
            if self._preparer is None:
                info = await self._call(self.model.info.remote(), 300.0)
                inputs = self.cfg.inputs
                section = InputSection.model_validate(
                    inputs.model_dump(exclude={"allowed_uri_prefixes"})
                )
                self._preparer = await asyncio.to_thread(
                    ClipPreparer, section, int(info["sample_rate"])
                )
        return self._preparer

    @api.get(HEALTH)
    async def health(self) -> dict[str, str]:
        """Liveness of the ingress; no token needed."""
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """The served export: name, version, preset, space, vocoder, training run, defaults."""
        info = await self._call(self.model.info.remote(), 30.0)
        return {"data": [info]}

    @api.post("/v1/dub", openapi_extra={"requestBody": _DUB_BODY}, response_class=Response)
    async def dub(self, request: Request) -> Response:
        """Dub the clip with `text` in the reference voice; audio/wav or video/mp4."""
        started = time.monotonic()
        rid = uuid.uuid4().hex[:12]
        folder = Path(tempfile.mkdtemp(prefix="dubforge-req-"))  # mode 0700
        try:
            return await asyncio.wait_for(
                self._dub(request, folder, rid, started), self.cfg.limits.request_timeout_s
            )
        except TimeoutError:
            raise ApiError(
                504, "timeout", f"no answer within {self.cfg.limits.request_timeout_s:g} s"
            ) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _dub(self, request: Request, folder: Path, rid: str, started: float) -> Response:
        from dubforge.serve.inputs import InputError, encode_wav

        lim = self.cfg.limits
        try:
            form = await read_form(
                request.headers.get("content-type", ""), _body(request), folder, self.form_limits
            )
            req = parse(
                form.fields,
                set(form.files),
                max_text_chars=lim.max_text_chars,
                max_nfe=lim.max_nfe,
                uri_prefixes=self.cfg.inputs.allowed_uri_prefixes,
            )
        except (FormError, RequestError) as e:
            raise ApiError(e.status, "invalid" if e.status in (400, 422) else "refused",
                           f"{e.field}: {e.detail}" if e.field else e.detail) from None  # fmt: skip
        video = form.files.get("video") or self._fetch(req.video_uri, folder, "video")
        reference = form.files.get("reference") or (
            self._fetch(req.reference_uri, folder, "reference") if req.reference_uri else None
        )
        preparer = await self.preparer()
        try:
            clip, ref_wave, background = await self._prepare(preparer, video, reference, req)
        except InputError as e:
            raise ApiError(e.status, "unusable_media", f"{e.field}: {e.detail}") from None
        ref_rate = clip.sample_rate
        line = {
            "text": req.text,
            "duration": clip.duration,
            "lips": clip.lips,
            "face": clip.face,
            "face_fps": round(clip.face_fps),
            "labels": req.labels,
            "reference": ref_wave,
            "reference_rate": ref_rate,
            "reference_text": req.reference_text,
            "guidance": req.guidance,
            "nfe": req.nfe,
            "method": req.method,
            "sway": req.sway,
            "seed": req.seed,
        }
        answer = await self._call(self.model.dub.remote(line), None)
        if "error" in answer:
            raise ApiError(422, "invalid", answer["error"])
        wave, sr, served = answer["wave"], answer["sample_rate"], answer["model"]
        headers = {
            "X-Request-Id": rid,
            "X-Dubforge-Model": f"{served['name']}/{served['version']}",
            RANDOM_HEADER: "true" if served["random_weights"] else "false",
            "X-Dubforge-Seconds": f"{len(wave) / sr:.3f}",
            "X-Dubforge-Batch": answer["batch"],
            "X-Dubforge-Rtf": f"{(time.monotonic() - started) / max(clip.duration, 1e-3):.4f}",
        }
        if req.format == "wav":
            return Response(encode_wav(wave, sr), media_type="audio/wav", headers=headers)
        out = folder / "dubbed.mp4"
        await asyncio.to_thread(preparer.mux, clip, wave, _fit(background, len(wave)), out)
        return Response(out.read_bytes(), media_type="video/mp4", headers=headers)

    async def _prepare(
        self, preparer: Any, video: Path, reference: Path | None, req: DubRequest
    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """(clip, reference wave, background) at the model's rate. No reference upload: the
        clip's own dialogue (separated when a separator is configured)."""

        async def slot(fn: Callable[..., Any], *args: Any) -> Any:
            async with self.prepare_slots:
                return await asyncio.to_thread(fn, *args)

        key = await asyncio.to_thread(_sha256, video)
        clip = await self.clips.get(key, lambda: slot(preparer.prepare, video))
        clip = dataclasses.replace(clip, path=video)  # this request's own upload, for muxing
        stems = None
        if reference is None or req.format == "mp4":
            stems = await self.stems.get(key, lambda: slot(preparer.dialogue_and_background, clip))
        if reference is not None:
            ref = await slot(preparer.reference, reference, clip.sample_rate)
        else:
            ref = stems.dialogue
        background = stems.background if stems is not None else np.zeros_like(clip.audio)
        return clip, ref, background

    def _fetch(self, uri: str | None, folder: Path, name: str) -> Path:
        from dubforge import storage

        assert uri is not None
        try:
            return storage.localize(uri, folder / f"uri-{name}")
        except (OSError, ValueError) as e:
            raise ApiError(
                400, "invalid", f"{name}_uri: cannot be read ({type(e).__name__})"
            ) from None

    async def _call(self, pending: Any, timeout: float | None) -> Any:
        """Await a model deployment call, mapping Serve's failures to answers."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        try:
            if timeout is None:
                return await pending
            return await asyncio.wait_for(pending, timeout)
        except BackPressureError:
            raise ApiError(
                429, "busy", "the model queue is full; retry later", {"Retry-After": "1"}
            ) from None
        except (DeploymentUnavailableError, ReplicaUnavailableError, ActorDiedError,
                ActorUnavailableError, RayActorError):  # fmt: skip
            raise ApiError(
                503, "unavailable", "no model replica could take the request; retry later",
                {"Retry-After": "2"},
            ) from None  # fmt: skip
        except TimeoutError:
            raise ApiError(504, "timeout", "the model did not answer in time") from None


def deployment_options(cfg: ServeConfig) -> dict[str, dict[str, Any]]:
    """Serve options of both deployments, as `.options()` and a Serve config file take them."""
    a, lim, res = cfg.autoscaling, cfg.limits, cfg.resources
    autoscaling = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "metrics_interval_s": a.metrics_interval_s,
        "look_back_period_s": a.look_back_period_s,
    }
    if a.initial_replicas is not None:
        autoscaling["initial_replicas"] = a.initial_replicas
    model_actor: dict[str, Any] = {"num_cpus": res.model_cpus}
    if res.num_gpus:
        model_actor["num_gpus"] = res.num_gpus
    return {
        "DubberModel": {
            "autoscaling_config": autoscaling,
            "max_ongoing_requests": lim.max_ongoing_requests,
            "max_queued_requests": lim.max_queued_requests,
            "ray_actor_options": model_actor,
            "graceful_shutdown_timeout_s": 20.0,
        },
        "DubbingAPI": {
            "num_replicas": res.ingress_replicas,
            "max_ongoing_requests": 4 * (lim.max_ongoing_requests + lim.max_queued_requests),
            "ray_actor_options": {"num_cpus": res.ingress_cpus},
        },
    }


def bind_app(cfg: ServeConfig, env: dict[str, str] | None = None) -> serve.Application:
    """Both deployments bound from `cfg`. `env`: variables for the ingress replicas' processes
    (`dubforge serve` hands its own API token this way to a cluster whose nodes lack it)."""
    plain = cfg.model_dump(mode="json")
    opts = deployment_options(cfg)
    model = DubberModel.options(**opts["DubberModel"]).bind(plain)
    ingress = opts["DubbingAPI"]
    if env:
        actor = dict(ingress["ray_actor_options"])
        actor["runtime_env"] = {"env_vars": dict(env)}
        ingress = {**ingress, "ray_actor_options": actor}
    return DubbingAPI.options(**ingress).bind(model, plain)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (`import_path: dubforge.serve.app:build_app`): `args` =
    {"config": a ServeConfig dict}, as `dubforge serve --build` writes it."""
    return bind_app(ServeConfig.model_validate(args.get("config", args)))
