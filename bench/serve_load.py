"""Dubbing service under load: latency percentiles, requests/s and RTF per concurrency level,
with `@serve.batch` batching on against off.

    .venv/bin/python bench/serve_load.py [--preset small] [--levels 1,4,16] [--requests 16]
        [--nfe 8] [--seconds 3] [--batch-size 16] [--wait 0.1] [--out results.json]
    .venv/bin/python bench/serve_load.py --quick   # tiny preset, levels 1,4, 8 requests
    .venv/bin/python bench/serve_load.py --gpu     # base preset on cuda, 10 s clips, NFE 16

The service is jobs/serve_debug.yaml with the overrides the run prints: a random-weight dubber
(`random:PRESET`), one model replica (autoscaling min = max = 1, so the two variants differ in
batching alone), `limits.max_ongoing_requests` = --batch-size in both so that a full batch can
form, a queue bound of the highest level so the bounded load is never refused. It is deployed
with `dubforge.serve.run.start` on a Ray started in this process, sized to hold both
deployments. Variant "on" has max_batch_size = --batch-size and batch_wait_timeout_s = --wait;
variant "off" has max_batch_size = 1. Between them the application is deleted (`serve.delete`
waits until it is gone) and deployed anew; the run checks that no "off" answer came from a
batch larger than 1 and that the two variants were served by different replicas.

Each variant is warmed up with 2 requests (the first prepares the clip, which the ingress then
caches by content hash), then each level sends --requests requests (at least the level) through
that many client threads, every request an HTTP POST /v1/dub by `dubforge.serve.client.Client`:
the same clip, reference wav and line, distinct seeds, the export's default eq. 9 guidance.
The clip is cut from a synthetic movie (`dubforge synth`, cached in --workdir) starting at
its first line, --seconds long; the reference is 3 s of the movie after it.

Per request: wall latency at the client, HTTP status, seconds of audio (X-Dubforge-Seconds),
the size of the model batch that served it (X-Dubforge-Batch), RTF = latency / audio seconds.
Per level: percentiles over the answered requests (with 16 requests p99 is close to the
slowest), requests/s = answered requests / the level's wall time, mean RTF and batch size.
Ray Serve forms a batch from the requests that reach the replica within batch_wait_timeout_s
of its first one, even while an earlier batch still runs, so the batch column also shows how
closely the ingress hands requests on.

Targets. CPU: batching at concurrency 16 gives >= 2x the requests/s of no batching at equal or
better p99, with no refused requests. GPU (--gpu; base preset, NFE 16, 10 s clips, levels up
to 64): RTF <= 0.02 for every request at concurrency 1 with batching on. The service has no
precision setting, so a GPU replica computes in fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import requests

from dubforge.config import load_job
from dubforge.serve.client import Client, ServiceError
from dubforge.serve.config import ServeConfig
from dubforge.serve.source import RANDOM_PRESETS

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "serve_debug.yaml"
TEXT = "The night is dark, and every voice we hear comes home to us."
REFERENCE_SECONDS = 3.0
WARMUP_REQUESTS = 2
REQUEST_TIMEOUT_S = 600.0  # the bench measures queueing, so the service must not answer 504
SPEEDUP_TARGET = 2.0  # issue: batching at concurrency 16 vs no batching, on this CPU
TARGET_LEVEL = 16
RTF_TARGET = 0.02  # issue: GPU, base preset, 10 s clips, concurrency 1
GPU_LEVELS = (1, 4, 16, 32, 64)


@dataclass(frozen=True)
class Outcome:
    """One request: what the client saw."""

    variant: str
    level: int
    seed: int
    latency: float  # s, at the client: upload, queue, generation, download
    status: int  # HTTP status; 0 when no answer came (connection error)
    error: str
    audio_seconds: float
    batch: int  # size of the model batch that served it; 0 on error
    replica: str


@dataclass(frozen=True)
class Level:
    """The summary of one variant at one concurrency level."""

    variant: str
    level: int
    n: int
    ok: int
    errors: int
    wall: float
    p50: float
    p95: float
    p99: float
    rps: float
    rtf: float
    batch: float


def summarize(variant: str, level: int, outcomes: list[Outcome], wall: float) -> Level:
    good = [o for o in outcomes if o.status == 200]
    lat = np.array([o.latency for o in good]) if good else np.array([math.nan])
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return Level(
        variant=variant,
        level=level,
        n=len(outcomes),
        ok=len(good),
        errors=len(outcomes) - len(good),
        wall=wall,
        p50=p50,
        p95=p95,
        p99=p99,
        rps=len(good) / wall,
        rtf=float(np.mean([o.latency / o.audio_seconds for o in good])) if good else math.nan,
        batch=float(np.mean([o.batch for o in good])) if good else math.nan,
    )


# ---------------------------------------------------------------------------------- inputs


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=300)


def make_media(workdir: Path, seconds: float) -> tuple[Path, Path]:
    """(clip.mp4, ref.wav): a `seconds` cut of a synthetic movie with a talking face, from just
    before its first line, and 3 s of the movie's audio after the clip (cached in workdir)."""
    from dubforge.synth.config import SynthConfig
    from dubforge.synth.corpus import generate

    duration = max(12.0, seconds + REFERENCE_SECONDS + 6.0)
    corpus = workdir / f"corpus-{duration:g}s"
    generate(
        SynthConfig(
            output=str(corpus),
            movies=1,
            duration=duration,
            scene_seconds=duration,
            speech_utterances=0,
            workers=1,
        )
    )
    clip, ref = workdir / f"clip-{seconds:g}s.mp4", workdir / f"ref-{seconds:g}s.wav"
    if clip.is_file() and ref.is_file():
        return clip, ref
    movie = next((corpus / "movies").glob("*.mp4"))
    truth = json.loads(next((corpus / "truth").glob("*/alignment.json")).read_text())
    start = max(0.0, float(truth["lines"][0]["start"]) - 0.2)
    _ffmpeg(
        "-ss",
        f"{start:.2f}",
        "-t",
        f"{seconds:g}",
        "-i",
        str(movie),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(clip),
    )
    _ffmpeg(
        "-ss",
        f"{start + seconds:.2f}",
        "-t",
        f"{REFERENCE_SECONDS:g}",
        "-i",
        str(movie),
        "-vn",
        "-ac",
        "1",
        str(ref),
    )
    return clip, ref


# ---------------------------------------------------------------------------------- service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def overrides(args: argparse.Namespace, port: int, batch_size: int) -> list[str]:
    """The `key=value` overrides of jobs/serve_debug.yaml for one variant."""
    out = [
        "name=serve-load",
        f"model={args.model}",
        f"port={port}",
        f"cache_dir={args.workdir / 'cache'}",
        "autoscaling.min_replicas=1",
        "autoscaling.max_replicas=1",
        f"batching.max_batch_size={batch_size}",
        f"batching.batch_wait_timeout_s={args.wait}",
        f"limits.max_ongoing_requests={args.batch_size}",
        f"limits.max_queued_requests={max(args.levels)}",
        f"limits.max_nfe={max(args.nfe, 32)}",
        f"limits.request_timeout_s={REQUEST_TIMEOUT_S:g}",
        f"inputs.max_clip_seconds={max(10.0, args.seconds + 2.0):g}",
        f"resources.threads={args.threads}",
    ]
    if args.gpu:
        out += ["resources.device=cuda", "resources.num_gpus=1"]
    return out


def load_config(items: list[str]) -> ServeConfig:
    cfg = load_job(JOB, items)
    assert isinstance(cfg, ServeConfig)
    return cfg


def wait_ready(url: str, token: str, timeout: float = 600.0) -> None:
    """Until GET /v1/models answers 200 (the model replica is up and answering)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = requests.get(
                f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service at {url} did not answer within {timeout:g} s")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------- load


class Sender:
    """Sends the bench's request through one Client per client thread."""

    def __init__(self, url: str, token: str, clip: Path, ref: Path, nfe: int) -> None:
        self.url, self.token, self.clip, self.ref, self.nfe = url, token, clip, ref, nfe
        self.local = threading.local()

    def send(self, variant: str, level: int, seed: int) -> Outcome:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = Client(self.url, self.token, REQUEST_TIMEOUT_S + 60)
        t0 = time.perf_counter()
        try:
            got = client.dub(self.clip, TEXT, reference=self.ref, nfe=self.nfe, seed=seed)
        except ServiceError as e:
            latency = time.perf_counter() - t0
            return Outcome(variant, level, seed, latency, e.status, e.error, 0.0, 0, "")
        except requests.RequestException as e:
            latency = time.perf_counter() - t0
            return Outcome(variant, level, seed, latency, 0, type(e).__name__, 0.0, 0, "")
        latency = time.perf_counter() - t0
        replica_call, _, size = got.headers["X-Dubforge-Batch"].rpartition("/")
        return Outcome(
            variant,
            level,
            seed,
            latency,
            200,
            "",
            float(got.headers["X-Dubforge-Seconds"]),
            int(size),
            replica_call.rsplit("-", 1)[0],
        )


def run_variant(
    variant: str, sender: Sender, args: argparse.Namespace
) -> tuple[list[Level], list[Outcome]]:
    """Warm-up, then every level in turn; one progress line per level."""
    for i in range(WARMUP_REQUESTS):
        warm = sender.send(variant, 0, 10_000 + i)
        if warm.status != 200:
            raise RuntimeError(f"{variant}: warm-up request failed: {warm.status} {warm.error}")
    levels, outcomes = [], []
    for level in args.levels:
        n = max(args.requests, level)
        print(f"  {variant:<3} concurrency {level:>2}: {n} requests ...", end="", flush=True)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=level) as pool:
            done = list(pool.map(lambda s, lv=level: sender.send(variant, lv, s), range(n)))
        summary = summarize(variant, level, done, time.perf_counter() - t0)
        print(f" {summary.ok}/{n} ok in {summary.wall:.1f} s, {summary.rps:.2f} req/s", flush=True)
        levels.append(summary)
        outcomes += done
    return levels, outcomes


def check_clean(outcomes: list[Outcome]) -> None:
    """The "off" answers came from batches of 1 and from a replica of its own deployment."""
    off = [o for o in outcomes if o.variant == "off" and o.status == 200]
    on_replicas = {o.replica for o in outcomes if o.variant == "on" and o.status == 200}
    if any(o.batch > 1 for o in off):
        raise RuntimeError("the batching-off deployment answered from batches > 1")
    if on_replicas & {o.replica for o in off}:
        raise RuntimeError("the batching-off run was served by the batching-on replica")


# ---------------------------------------------------------------------------------- report


def print_table(rows: list[Level]) -> None:
    head = (
        f"{'variant':<8}{'level':>6}{'n':>5}{'ok':>5}{'errors':>7}{'p50 s':>9}{'p95 s':>9}"
        f"{'p99 s':>9}{'req/s':>8}{'RTF':>8}{'batch':>7}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r.variant:<8}{r.level:>6}{r.n:>5}{r.ok:>5}{r.errors:>7}{r.p50:>9.2f}"
            f"{r.p95:>9.2f}{r.p99:>9.2f}{r.rps:>8.2f}{r.rtf:>8.3f}{r.batch:>7.1f}"
        )


def print_errors(outcomes: list[Outcome]) -> None:
    kinds: dict[tuple[str, int, int, str], int] = {}
    for o in outcomes:
        if o.status != 200:
            key = (o.variant, o.level, o.status, o.error)
            kinds[key] = kinds.get(key, 0) + 1
    for (variant, level, status, error), count in sorted(kinds.items()):
        print(f"  errors: {variant} concurrency {level}: {count} x {status} {error}")


def targets(rows: list[Level], outcomes: list[Outcome], gpu: bool) -> dict[str, object]:
    """Print the target lines; returns them for the JSON."""
    by = {(r.variant, r.level): r for r in rows}
    level = TARGET_LEVEL if ("on", TARGET_LEVEL) in by else max(r.level for r in rows)
    on, off = by[("on", level)], by[("off", level)]
    speedup = on.rps / off.rps if off.rps else math.inf
    met = speedup >= SPEEDUP_TARGET and on.p99 <= off.p99 and on.errors == 0
    note = (
        ""
        if level == TARGET_LEVEL
        else f" (this run's highest level; the target is at {TARGET_LEVEL})"
    )
    print(
        f"\nbatching at concurrency {level}: {speedup:.2f}x the requests/s of no batching "
        f"(target >= {SPEEDUP_TARGET:g}x), p99 {on.p99:.2f} s vs {off.p99:.2f} s: "
        f"{'MET' if met else 'MISSED'}{note}"
    )
    out: dict[str, object] = {"level": level, "speedup": speedup, "batching_met": met}
    if gpu:
        rtfs = [
            o.latency / o.audio_seconds
            for o in outcomes
            if o.variant == "on" and o.level == 1 and o.status == 200
        ]
        worst = max(rtfs) if rtfs else math.inf
        rtf_met = worst <= RTF_TARGET and by[("on", 1)].errors == 0
        print(
            f"RTF at concurrency 1: {worst:.4f} worst, {np.mean(rtfs):.4f} mean "
            f"(target <= {RTF_TARGET:g} per request): {'MET' if rtf_met else 'MISSED'}"
        )
        out.update(rtf_worst=worst, rtf_met=rtf_met)
    return out


# ---------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="small", choices=RANDOM_PRESETS)
    p.add_argument(
        "--model",
        help="model source instead of random:PRESET (an export folder, models:/NAME/VERSION)",
    )
    p.add_argument("--levels", default="1,4,16", help="client concurrency levels, comma-separated")
    p.add_argument(
        "--requests", type=int, default=16, help="requests per level (at least the level)"
    )
    p.add_argument("--nfe", type=int, default=8, help="velocity evaluations per request")
    p.add_argument("--seconds", type=float, default=3.0, help="clip length")
    p.add_argument("--batch-size", type=int, default=16, help="max_batch_size of variant on")
    p.add_argument("--wait", type=float, default=0.1, help="batch_wait_timeout_s of variant on")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model replica")
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench" / "serve_load")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny, levels 1,4, 8 requests")
    p.add_argument(
        "--gpu",
        action="store_true",
        help=f"cuda, base preset, NFE 16, 10 s clips, levels {','.join(map(str, GPU_LEVELS))}",
    )
    args = p.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    if args.quick:
        args.preset, args.levels, args.requests = "tiny", [1, 4], 8
    if args.gpu:
        args.levels, args.nfe, args.seconds = list(GPU_LEVELS), 16, 10.0
    args.model = args.model or f"random:{'base' if args.gpu else args.preset}"
    return args


def validate(args: argparse.Namespace) -> None:
    """Refuse what the service would refuse later, before any cluster is started."""
    if min(args.levels) < 1 or args.requests < 1:
        raise SystemExit("--levels and --requests must be positive")
    if (
        args.model.startswith("random:")
        and args.model.removeprefix("random:") not in RANDOM_PRESETS
    ):
        raise SystemExit(
            f"--model {args.model}: the service builds random weights only for "
            f"{', '.join(RANDOM_PRESETS)} (dubforge.serve.source.RANDOM_PRESETS); give --model "
            "an export folder or models:/NAME/VERSION of that preset"
        )
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device visible to torch")


def run_variants(
    configs: dict[str, ServeConfig], token: str, clip: Path, ref: Path, args: argparse.Namespace
) -> tuple[list[Level], list[Outcome]]:
    """Deploy each variant on a Ray started here, load it, delete it; Ray is shut down after."""
    import ray
    from ray import serve

    from dubforge.serve.run import start

    res = configs["on"].resources
    needed = math.ceil(res.model_cpus + res.ingress_cpus * res.ingress_replicas)
    ray.init(
        num_cpus=max(os.cpu_count() or 1, needed),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    rows: list[Level] = []
    outcomes: list[Outcome] = []
    try:
        for variant, cfg in configs.items():
            t0 = time.perf_counter()
            url = start(cfg)
            wait_ready(url, token)
            print(f"{variant}: deployed in {time.perf_counter() - t0:.0f} s", flush=True)
            levels, done = run_variant(variant, Sender(url, token, clip, ref, args.nfe), args)
            rows += levels
            outcomes += done
            serve.delete(cfg.name)  # blocks until the application is gone
    finally:
        ray.shutdown()  # the cluster is this process's own: Serve goes with it
    return rows, outcomes


def main() -> None:
    args = parse_args()
    validate(args)
    t0 = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    clip, ref = make_media(args.workdir, args.seconds)
    token = secrets.token_urlsafe(24)
    os.environ["DUBFORGE_API_TOKEN"] = token  # run.start hands it to the ingress replicas
    port = free_port()
    variants = {"on": args.batch_size, "off": 1}
    items = {v: overrides(args, port, size) for v, size in variants.items()}
    configs = {v: load_config(x) for v, x in items.items()}
    print(
        f"{args.model} on {configs['on'].resources.device}, {args.seconds:g} s clip, NFE "
        f"{args.nfe}, levels {args.levels}, {args.requests} requests a level; batching on = "
        f"max_batch_size {args.batch_size}, wait {args.wait:g} s; off = max_batch_size 1"
    )
    print(f"  {JOB.relative_to(REPO)} " + " ".join(items["on"][1:]))
    rows, outcomes = run_variants(configs, token, clip, ref, args)
    check_clean(outcomes)
    print_table(rows)
    print_errors(outcomes)
    verdicts = targets(rows, outcomes, args.gpu)
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "overrides": items,
            "levels": [asdict(r) for r in rows],
            "requests": [asdict(o) for o in outcomes],
            "targets": verdicts,
        }
        args.out.write_text(json.dumps(result, indent=1))
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
