"""Training throughput: a plain single-process PyTorch loop against Ray Train + DeepSpeed.

    .venv/bin/python bench/train_speed.py [--preset tiny] [--steps 60] [--workers 2] [--zero 2]
        [--tasks v2s] [--frame-budget 800] [--max-samples 8] [--threads 1]
        [--shards DIR | --clips N] [--out runs/bench/train_speed] [--skip-ray]
    .venv/bin/python bench/train_speed.py --steps 20  # a quick check, about 1 min on 2 cores

Both paths train the same model (`--preset`, mel space, fp32, random init) on the same data (the
stage's shards, with the stage's task mix and source repeat factors) with the same frame-budget
batching (`FrameBatcher`), `collate`, loss, LR schedule (`engine.lr_at`) and AdamW (betas
(0.9, 0.98), eps 1e-9, weight decay 0.01, gradient clip 1.0), for the same number of optimizer
steps (one micro-batch per worker and step):

- plain: one process. Every record of the stage's shards is read once with `read_shard` and packed
  into the rows Ray Data's `decode_rows` produces, records no stage task can use left out as there
  (the time of that is reported on its own and excluded from the throughput); the loop then feeds
  them, shuffled per epoch, through `FrameBatcher` + `collate` + `model.loss` + backward + AdamW, as
  `platform/train/loop.py` does inside a worker.
- ray: `dubforge.train.curriculum.main(cfg)` in this process with a one-stage CurriculumConfig built
  here (DeepSpeed ZeRO `--zero`, fp32, `--workers` CPU workers at 0.5 CPU each, data streamed from
  the shards by Ray Data). Its numbers are the last logged window's metrics in
  `<out>/train/train_speed/summary.json`; the total stage seconds include worker start-up, DeepSpeed
  init, the start/end validation and the final checkpoint.

Throughput counts samples and latent frames (a sample's frames x its task's streams, as the worker
loop's `_Window`) over the measured steps: the first ceil(steps / 2) steps are warm-up in both paths
(Ray: `tracking.log_every` = ceil(steps / 2), so the last window is the rest). The data-wait
fraction is the share of step time spent waiting for the next collated micro-batch: the plain loop
batches and collates inline, so all of that counts; a Ray worker's data thread reads its split,
batches and collates two micro-batches ahead (loop.py's `_Prefetcher`), so only what it has not
finished in time counts, while its CPU work competes with the step for the same cores and shows in
the step time instead. Overhead per worker = 1 - (ray samples/s / workers) / (plain samples/s);
targets: overhead < 15 %, Ray data wait < 5 %. On a box with few cores the workers and Ray Data's
read and decode tasks share them, so per-worker numbers include that contention; compare only
numbers from the same invocation, and watch the busy cores of other processes printed with each path
(sampled every second: this process tree, Ray's processes included, against the machine).

The "epochs" column is the number of passes over the stage's records in the whole run. Every
epoch start restarts Ray Data's streaming split (a new dataset execution), which the workers see
as data wait: on the shared 2-core dev box a 20-step run over 48 clips passed 4 epochs and the
Ray data wait was 22 to 32 %, against under 4 % over 256 or 320 clips. So the generated corpus
is by default large enough that no worker reaches the end of an epoch: steps x workers x
min(max samples, frame budget / 100) clips (clips last 1 to 2 s, 100 to 200 mel frames), at
least 48.

Shards: `--shards DIR` holding movies/*.tar (video tasks) and speech/*.tar (tts), else generated
into <out>/shards with tests/train/corpus.make_shards (`--clips` movie clips when a task needs
video and `--clips` speech clips with tts, 4 otherwise; about 0.4 MB per movie clip) and reused
while the counts stay the same. Ray Train, the MLflow store (sqlite) and its artifacts stay
under --out. Results go to <out>/train_speed.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from dubforge import storage
from dubforge.ingest.shards import read_shard
from dubforge.model.batch import TASK_STREAMS, VIDEO_TASKS, collate
from dubforge.model.presets import PRESETS, build_model, space_from_config
from dubforge.train import data as train_data
from dubforge.train import engine as eng
from dubforge.train.config import CurriculumConfig, Stage
from dubforge.train.data import DataCounters, FrameBatcher, Item, micro_batches, plan_stage
from dubforge.train.loop import stage_model_config

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "train" / "corpus.py"
NAME = "train_speed"
STAGE = "bench"
WAIT_TARGET = 0.05
OVERHEAD_TARGET = 0.15


def parse_tasks(text: str) -> dict[str, float]:
    """`v2s` or `v2st:2,v2s:1` -> {task: weight}."""
    out = {}
    for part in text.split(","):
        task, _, weight = part.strip().partition(":")
        out[task] = float(weight) if weight else 1.0
    return out


def default_clips(args: argparse.Namespace) -> int:
    """Clips per needed source such that no worker reaches an epoch's end within the run."""
    per_batch = min(args.max_samples, max(1, args.frame_budget // 100))
    return max(48, -(-args.steps * args.workers * per_batch // 4) * 4)


def ensure_shards(args: argparse.Namespace, out: Path) -> Path:
    """`--shards`, or shards generated once under <out>/shards (regenerated when the counts
    change)."""
    if args.shards:
        return Path(args.shards)
    root = out / "shards"
    tasks = parse_tasks(args.tasks)
    clips = args.clips or default_clips(args)
    params = {"movies": clips if any(t in VIDEO_TASKS for t in tasks) else 4,
              "speech": clips if "tts" in tasks else 4, "per_shard": 4, "seed": 0}  # fmt: skip
    marker = root / "params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    shutil.rmtree(root, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("train_corpus", CORPUS)
    assert spec is not None and spec.loader is not None
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)  # by path: the repo root on sys.path would shadow `platform`
    t0 = time.perf_counter()
    corpus.make_shards(root, **params)
    marker.write_text(json.dumps(params))
    print(f"generated {params['movies']} movie + {params['speech']} speech clips in {root} "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return root


def build_config(args: argparse.Namespace, shards: Path, out: Path) -> CurriculumConfig:
    """The one-stage curriculum both paths train."""
    tasks = parse_tasks(args.tasks)
    data = []
    if any(t in VIDEO_TASKS for t in tasks):
        data.append({"shards": "movies/*.tar"})
    if "tts" in tasks:
        data.append({"shards": "speech/*.tar"})
    log_every = math.ceil(args.steps / 2)
    return CurriculumConfig.model_validate({
        "name": NAME, "shards": str(shards), "storage": str(out / "train"),
        "model": {"preset": args.preset, "space": {"name": "mel"}},
        "stages": [{"name": STAGE, "tasks": tasks, "data": data, "steps": args.steps,
                    "lr": [1e-4, 1e-3], "warmup_steps": 0}],
        "deepspeed": {"zero_stage": args.zero, "precision": "fp32", "grad_accum": 1,
                      "grad_clip": 1.0},
        "data": {"frame_budget": args.frame_budget, "max_samples": args.max_samples,
                 "buckets": 3, "max_frames": 400, "shuffle_buffer": 16},
        "scaling": {"workers": args.workers, "cpus_per_worker": 0.5,
                    "threads_per_worker": args.threads},
        "checkpoint": {"every": args.steps + 1, "keep": 1, "max_failures": 0},
        "tracking": {"experiment": "dubforge-bench", "log_every": log_every,
                     "validate_every": args.steps + 1, "validation_clips": 1,
                     "validation_nfe": 1, "register_as": None},
    })  # fmt: skip


def load_rows(cfg: CurriculumConfig, stage: Stage) -> tuple[list[tuple[dict, float]], float]:
    """Every record of the stage's shards as a decoded row (the columns of `decode_rows`) with
    its source's repeat factor, and the seconds reading and packing them took."""
    space = space_from_config(cfg.model.space)
    stem_keys = {"speech": space.array_key("speech"), "background": space.array_key("background")}
    plan = plan_stage(cfg, stage)
    t0 = time.perf_counter()
    rows: list[tuple[dict, float]] = []
    with tempfile.TemporaryDirectory(prefix="dubforge-bench-") as cache:
        for src in plan.sources:
            for uri in src.shards:
                for s in read_shard(storage.localize(uri, Path(cache))):
                    if not train_data.usable_tasks(s.arrays, stem_keys, stage.tasks):
                        continue
                    frames = train_data._frames(s.meta, s.arrays, stem_keys, space.frame_rate)
                    row = {"key": s.key, "url": uri, "frames": frames, "meta": json.dumps(s.meta),
                           "arrays": pickle.dumps(s.arrays, protocol=5), "error": ""}  # fmt: skip
                    rows.append((row, src.repeat))
    return rows, time.perf_counter() - t0


def epochs(
    rows: list[tuple[dict, float]], batcher_of: Any, rng: np.random.Generator
) -> Iterator[list[Item]]:
    """Endless micro-batches: per epoch each row floor(r) times plus once more with probability
    r - floor(r) (r: its source's repeat factor), shuffled, through a fresh FrameBatcher."""
    while True:
        epoch = []
        for row, r in rows:
            epoch += [row] * (int(r) + int(rng.random() < r - int(r)))
        order = rng.permutation(len(epoch))
        produced = 0
        for items in micro_batches((epoch[i] for i in order), batcher_of()):
            produced += 1
            yield items
        if not produced:
            raise RuntimeError("an epoch gave no micro-batch: no record fits the tasks")


def plain_loop(cfg: CurriculumConfig, threads: int) -> dict[str, Any]:
    """The single-process loop; throughput over the steps after ceil(steps / 2) warm-up steps."""
    stage = cfg.stages[0]
    rows, load_s = load_rows(cfg, stage)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    space = space_from_config(cfg.model.space)
    model_cfg = stage_model_config(cfg, stage)
    model = build_model(model_cfg, space).train()
    params = [p for p in model.parameters() if p.requires_grad]
    ds = cfg.deepspeed
    opt = torch.optim.AdamW(params, lr=stage.lr[0], betas=ds.betas, eps=ds.eps,
                            weight_decay=ds.weight_decay)  # fmt: skip
    rng = np.random.default_rng([cfg.seed, 0, 0, 0])
    counters = DataCounters()
    batches = epochs(rows, lambda: FrameBatcher(space, stage.tasks, cfg.data, rng, counters), rng)
    warmup = math.ceil(stage.steps / 2)
    samples = frames = 0
    seconds = wait = loss = 0.0
    t_start = time.perf_counter()
    for step in range(stage.steps):
        t_step = time.perf_counter()
        eng.set_lr(opt, eng.lr_at(step, stage))
        items = next(batches)
        batch = collate([it.record for it in items], space, tasks=[it.task for it in items],
                        train=True, span_frac=model_cfg.loss.span_frac, seed=rng,
                        activity_db=model_cfg.loss.activity_db)  # fmt: skip
        t_wait = time.perf_counter() - t_step
        losses = model.loss(batch)
        losses["loss"].backward()
        if ds.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, ds.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            seconds += time.perf_counter() - t_step
            wait += t_wait
            samples += len(items)
            frames += sum(it.frames * len(TASK_STREAMS[it.task]) for it in items)
            loss += float(losses["loss"].detach())
    measured = stage.steps - warmup
    return {
        "workers": 1, "samples_per_s": samples / seconds, "frames_per_s": frames / seconds,
        "per_worker_samples_per_s": samples / seconds, "data_wait_frac": wait / seconds,
        "loss": loss / measured, "measured_steps": measured, "measured_samples": samples,
        "measured_seconds": seconds, "train_seconds": time.perf_counter() - t_start,
        "load_seconds": load_s, "records": len(rows), "rows_seen": counters.rows,
        "epochs": counters.rows / plan_stage(cfg, stage).epoch_samples,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }  # fmt: skip


def ray_path(cfg: CurriculumConfig, out: Path) -> dict[str, Any]:
    """The curriculum driver in this process; metrics of its last logged window."""
    from dubforge.train import curriculum

    os.environ["DUBFORGE_WORKSPACE"] = str(out / "workspace")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    root = Path(curriculum.storage_root(cfg))
    shutil.rmtree(root, ignore_errors=True)  # an existing export would skip the stage
    t0 = time.perf_counter()
    curriculum.main(cfg)
    wall = time.perf_counter() - t0
    summary = json.loads((root / "summary.json").read_text())
    entry = summary["stages"][0]
    m = entry["metrics"]
    workers = cfg.scaling.workers
    measured = cfg.stages[0].steps - cfg.tracking.log_every
    return {
        "workers": workers, "samples_per_s": m["train/samples_per_s"],
        "frames_per_s": m["train/frames_per_s"],
        "per_worker_samples_per_s": m["train/samples_per_s"] / workers,
        "data_wait_frac": m["train/data_wait_frac"], "loss": m.get("train/loss", float("nan")),
        "measured_steps": measured, "measured_samples": m.get("train/samples"),
        "stage_seconds": entry["seconds"], "wall_seconds": wall,
        "address": os.environ.get("RAY_ADDRESS") or "local", "summary": str(root / "summary.json"),
        "epochs": m["data/rows"] / plan_stage(cfg, cfg.stages[0]).epoch_samples, "metrics": m,
    }  # fmt: skip


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuSampler(threading.Thread):
    """Busy cores of this process tree (Ray's processes included) and of everything else on
    the machine, polled every `interval` s while a path runs."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.me = interval, psutil.Process()
        self.done = threading.Event()
        self.last: dict[int, float] = {}
        self.ours = 0.0
        self._poll(count=False)
        self.t0, self.machine0 = time.perf_counter(), self._machine()

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def _poll(self, count: bool = True) -> None:
        try:
            procs = [self.me, *self.me.children(recursive=True)]
        except psutil.Error:
            procs = [self.me]
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            cpu = t.user + t.system
            if count:
                self.ours += cpu - self.last.get(p.pid, 0.0)
            self.last[p.pid] = cpu

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self._poll()
        self._poll()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        wall = time.perf_counter() - self.t0
        busy = self._machine() - self.machine0
        return {"cores_ours": round(self.ours / wall, 2),
                "cores_others": round(max(0.0, busy - self.ours) / wall, 2)}  # fmt: skip


def other_ray_instances() -> int:
    """Ray clusters running on this machine outside this process tree (GCS servers)."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    n = 0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "gcs_server" and p.pid not in mine:
            n += 1
    return n


def report(args: argparse.Namespace, cfg: CurriculumConfig, res: dict[str, Any]) -> None:
    plain, ray = res["plain"], res.get("ray")
    print(f"\n{args.preset} preset ({plain['params_m']:.1f} M params), tasks {args.tasks}, "
          f"{args.steps} steps ({plain['measured_steps']} measured after "
          f"{args.steps - plain['measured_steps']} warm-up), frame budget {args.frame_budget}, "
          f"max {args.max_samples} samples, {args.threads} torch thread(s) a process")  # fmt: skip
    print(f"plain: {plain['records']} records loaded in {plain['load_seconds']:.2f} s (excluded), "
          f"loop {plain['train_seconds']:.1f} s; busy cores: ours {plain['cores_ours']}, "
          f"others {plain['cores_others']}; load avg {res['load']['plain']}")  # fmt: skip
    if ray is not None:
        print(f"ray:   ZeRO-{args.zero}, {args.workers} workers x 0.5 CPU, stage "
              f"{ray['stage_seconds']:.1f} s, main() {ray['wall_seconds']:.1f} s; busy cores: "
              f"ours {ray['cores_ours']}, others {ray['cores_others']}; "
              f"load avg {res['load']['ray']}")  # fmt: skip
        if res["other_ray_instances"]:
            print(f"warning: {res['other_ray_instances']} other Ray instance(s) were running on "
                  f"this machine when the Ray path started: its numbers are contended")  # fmt: skip
    head = (f"{'path':<7}{'workers':>8}{'samples/s':>11}{'frames/s':>11}"
            f"{'per-worker s/s':>16}{'data wait':>11}{'epochs':>8}{'loss':>8}")  # fmt: skip
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in (("plain", plain), ("ray", ray)):
        if r is None:
            continue
        print(f"{name:<7}{r['workers']:>8}{r['samples_per_s']:>11.2f}{r['frames_per_s']:>11.0f}"
              f"{r['per_worker_samples_per_s']:>16.2f}{r['data_wait_frac']:>11.1%}"
              f"{r['epochs']:>8.1f}{r['loss']:>8.3f}")  # fmt: skip
    if ray is None:
        return
    d = res["derived"]
    ok = {True: "ok", False: "MISSED"}
    print(f"\noverhead per worker: {d['overhead_per_worker']:.1%} "
          f"(target < {OVERHEAD_TARGET:.0%}: {ok[d['overhead_ok']]})")  # fmt: skip
    print(f"ray data wait:       {ray['data_wait_frac']:.1%} "
          f"(target < {WAIT_TARGET:.0%}: {ok[d['wait_ok']]})")  # fmt: skip
    print(f"ray speed-up over plain: {d['speedup']:.2f}x with {args.workers} workers")
    print("epochs: passes over the stage's records in the whole run; each epoch start restarts "
          "Ray Data's streaming split and counts as data wait")  # fmt: skip
    cores = os.cpu_count() or 1
    print(f"note: on this {cores}-core box the {args.workers} workers "
          f"({args.workers * cfg.scaling.cpus_per_worker:g} CPU reserved) and Ray Data's "
          f"read/decode tasks share {cores} cores, so per-worker numbers include that "
          f"contention; other processes kept {plain['cores_others']} cores busy during the "
          f"plain loop and {ray['cores_others']} during the Ray path")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (half are warm-up)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--zero", type=int, default=2, choices=[1, 2, 3], help="DeepSpeed ZeRO stage")
    p.add_argument("--frame-budget", type=int, default=800, help="padded frames per micro-batch")
    p.add_argument("--max-samples", type=int, default=8, help="samples per micro-batch at most")
    p.add_argument("--tasks", default="v2s", help="task mix, e.g. v2s or v2st:2,v2s:1,tts:1")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--shards", help="folder with movies/*.tar and speech/*.tar (default: generate)")
    p.add_argument("--clips", type=int, default=0, help="clips per source (0: one epoch's worth)")
    p.add_argument("--out", default="runs/bench/train_speed")
    p.add_argument("--skip-ray", action="store_true", help="plain loop only")
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2 (half of them are warm-up)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = build_config(args, ensure_shards(args, out), out)
    res: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count(), "load": {}}
    res["load"]["before"] = _load()
    sampler = CpuSampler()
    sampler.start()
    res["plain"] = plain_loop(cfg, args.threads)
    res["plain"].update(sampler.stop())
    res["load"]["plain"] = _load()
    if not args.skip_ray:
        res["other_ray_instances"] = other_ray_instances()
        sampler = CpuSampler()
        sampler.start()
        res["ray"] = ray_path(cfg, out)
        res["ray"].update(sampler.stop())
        res["load"]["ray"] = _load()
        plain, ray = res["plain"], res["ray"]
        overhead = 1 - ray["per_worker_samples_per_s"] / plain["samples_per_s"]
        res["derived"] = {
            "overhead_per_worker": overhead, "overhead_ok": overhead < OVERHEAD_TARGET,
            "wait_ok": ray["data_wait_frac"] < WAIT_TARGET,
            "speedup": ray["samples_per_s"] / plain["samples_per_s"],
            "overhead_target": OVERHEAD_TARGET, "wait_target": WAIT_TARGET,
        }  # fmt: skip
    report(args, cfg, res)
    (out / "train_speed.json").write_text(json.dumps(res, indent=2, default=str))
    print(f"\nresults: {out / 'train_speed.json'}")


if __name__ == "__main__":
    main()
