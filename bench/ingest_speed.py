"""Ingest speed: the Ray Data pipeline against a plain sequential loop, and its memory at 1x/4x.

    .venv/bin/python bench/ingest_speed.py [--movies 4] [--duration 30] [--scale 1 4]
        [--skip-sequential] [--mel] [--workdir runs/bench/ingest_speed]
    .venv/bin/python bench/ingest_speed.py --variant decode1 --faces-actors 2  # a layout

What is measured, on the synthetic corpus (`dubforge synth`: movies with delivered dialogue/M&E
stems, so no separator runs, plus a speech-only corpus of 2 utterances per movie):

- Throughput in media-seconds per wall-second (media seconds = probed durations of the inputs,
  the summary's `this_run.media_seconds`):
  * sequential: one process calls the very stage objects the pipeline uses (plan_unit -> Decode
    -> require_stems -> energy -> Faces -> Tokenize -> UnitWriter) unit by unit, rows in
    batches of 4 (Faces one row at a time), timing each stage; each stage's share of the loop's
    wall time is printed. Torch threads: `--seq-threads`, default 1 (what each actor uses).
    All cores (`--seq-threads 0`) would be the same nominal CPU budget as the pipeline, but
    on a machine where other processes hold a core, torch's threads wait on each other: on
    the shared 2-core dev box that loop ran 3.2x slower (Tokenize 153 s instead of 14 s), a
    baseline too weak to beat honestly. ffmpeg, OpenCV and MediaPipe pick their own threads in
    both runs.
  * pipeline: `dubforge.ingest.pipeline.run(cfg)` into a fresh folder on a local Ray started
    with the CPUs `run` would ask for (max(min_cpus, cpu count)). Wall = ray.init + run; Ray's
    start is also shown on its own, and when the first unit was committed. Per-operator remote
    wall/CPU time and time inside the stage functions (split per fused stage) come from Ray
    Data's stats. The ratio pipeline / sequential has a target of >= 1.7x on 2 cores.
  Both outputs must hold the same accepted clip keys (checked on the smallest scale).
- Memory, for each --scale (corpus size multiple): peak RSS of the driver (getrusage), peak
  object-store bytes in use (raylet store stats polled every 0.5 s), peak summed RSS of the
  Ray worker processes (psutil; pages mapped from the object store count once per process)
  and bytes spilled. Streaming should keep these flat as the corpus grows.
- CPU: core-seconds used by the run's process tree by kind of process (psutil, every 0.5 s),
  as busy cores = core-seconds / wall, overall and per tenth of the run, against the cores
  everything else on the machine took meanwhile; load averages before and after each run. On
  a shared machine, compare only numbers from the same invocation, and look at "others' cores":
  where they hold a core, no 2-core overlap can show.
- `--variant` swaps build_dataset for a monkeypatched pool layout (platform/ingest untouched),
  to measure a proposed change before making it; `--codec-actors`/`--faces-actors` set the
  config's pool sizes.

The codec is a full-size EnCodec 24 kHz (transformers' default EncodecConfig, ~15 M parameters)
with RANDOM weights and noise codebooks: the codes are meaningless, the cost is the real one.
Each run is a fresh subprocess (clean peak RSS, a fresh Ray). Corpora and the codec are cached
in the workdir; results go to <workdir>/ingest_speed.json. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

MiB = 2**20
CORES = os.cpu_count() or 1


# ---------------------------------------------------------------------------------- inputs


def make_codec(folder: Path) -> Path:
    """A full-size EnCodec 24 kHz with random weights and noise codebooks (zeros at init would
    map every frame to code 0), saved with save_pretrained; reused when already there."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig()).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "codebook.embed" in name:
                buf.copy_(torch.randn(buf.shape, generator=gen))
    model.save_pretrained(folder)
    return folder


def make_corpus(workdir: Path, movies: int, duration: float, seed: int) -> Path:
    """The synthetic corpus of `movies` movies and 2 speech utterances per movie (cached)."""
    from dubforge.synth.config import SynthConfig
    from dubforge.synth.corpus import generate

    out = workdir / f"corpus-{movies}x{duration:g}s-seed{seed}"
    t0 = time.perf_counter()
    generate(
        SynthConfig(output=str(out), movies=movies, seed=seed, duration=duration,
                    speech_utterances=2 * movies, speech_speakers=1)
    )  # fmt: skip
    print(f"corpus {out.name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def ingest_config(corpus: Path, output: Path, codec: Path, opts: dict[str, Any]) -> Any:
    """The ingest config of one run: defaults except the inputs, codec and the knobs given."""
    from dubforge.ingest.config import IngestConfig

    return IngestConfig(
        input=[str(corpus / "movies"), str(corpus / "speech")],
        output=str(output),
        codec={"name_or_path": str(codec), "mel": opts["mel"], "actors": opts["codec_actors"]},
        faces={"actors": opts["faces_actors"]},
        num_cpus=opts["num_cpus"],
    )


# ---------------------------------------------------------------------------------- probes


def _title(p: psutil.Process) -> str:
    """A process's kind: 'driver', 'ray::<worker title>', 'ray system', 'ffmpeg' or its name."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "gone"
    head = cmd[0] if cmd else p.name()
    if head.startswith("ray::"):
        title = head.split()[0]  # actors add ".method" while they run one: drop it
        if ")." in title:
            return title[: title.rindex(")") + 1]
        return title if "(" in title else title.split(".")[0]
    if "ray" in " ".join(cmd[:3]):
        return "ray system"
    return Path(head).name


_REAPED = ("ffmpeg", "ffprobe")  # short-lived children: counted in their parent once reaped
_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")


class Sampler(threading.Thread):
    """Polls this process's tree every `interval` s: RSS peaks, CPU core-seconds by process
    kind (and how many processes of each kind), a timeline of busy cores (this tree against the
    whole machine) and, given a GCS address, the object store's bytes in use. CPU already spent
    when the sampler is created is not counted."""

    def __init__(self, interval: float = 0.5, gcs_address: str | None = None) -> None:
        super().__init__(daemon=True)
        self.interval, self.gcs_address = interval, gcs_address
        self.me = psutil.Process()
        self.done = threading.Event()
        self.peak: dict[str, int] = Counter()
        self.cpu: dict[str, float] = defaultdict(float)  # core-seconds by process kind
        self.pids: dict[str, set[int]] = defaultdict(set)
        self.timeline: list[tuple[float, float, float]] = []  # (t, our core-s, machine core-s)
        self._last_cpu: dict[int, float] = {}
        self._titles: dict[int, str] = {}
        self.store_error = ""
        self.samples = 0
        self.sample(None, count=False)  # baseline: CPU spent so far is not this run's
        self._t0, self._sys0 = time.perf_counter(), self._machine()

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, f) for f in _BUSY)

    def _store_used(self, state: Any) -> tuple[int, int]:
        from ray._private.internal_api import get_memory_info_reply

        stats = get_memory_info_reply(state, timeout_seconds=5).store_stats
        return int(stats.object_store_bytes_used), int(stats.spilled_bytes_total)

    def _kind(self, p: psutil.Process) -> str:
        if p.pid == self.me.pid:
            return "driver"
        title = self._titles.get(p.pid) or _title(p)
        if title.startswith("ray::") and "Worker(" in title:
            self._titles[p.pid] = title  # an actor keeps its title; task workers change theirs
        return title

    def sample(self, state: Any = None, count: bool = True) -> None:
        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except psutil.Error:
            pass
        workers_rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    if p.name() in _REAPED:
                        continue
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    cpu = t.user + t.system + t.children_user + t.children_system
                kind = self._kind(p)
            except psutil.Error:
                continue
            if count:
                self.cpu[kind] += cpu - self._last_cpu.get(p.pid, 0.0)
                self.pids[kind].add(p.pid)
            self._last_cpu[p.pid] = cpu
            if kind == "driver":
                self.peak["driver_rss"] = max(self.peak["driver_rss"], rss)
            elif kind.startswith("ray::"):
                workers_rss += rss
        self.peak["workers_rss"] = max(self.peak["workers_rss"], workers_rss)
        if state is not None:
            try:
                used, spilled = self._store_used(state)
                self.peak["store_used"] = max(self.peak["store_used"], used)
                self.peak["spilled"] = max(self.peak["spilled"], spilled)
            except Exception as e:  # noqa: BLE001 - a missed poll must not stop the run
                self.store_error = f"{type(e).__name__}: {e}"[:200]
        if count:
            now = time.perf_counter() - self._t0
            self.timeline.append((now, sum(self.cpu.values()), self._machine() - self._sys0))
            self.samples += 1

    def run(self) -> None:
        state = None
        if self.gcs_address:
            from ray._private.internal_api import get_state_from_address

            state = get_state_from_address(self.gcs_address)
        while not self.done.wait(self.interval):
            self.sample(state)
        self.sample(state)

    def _busy_by_tenth(self) -> list[tuple[float, float]]:
        """Average busy cores (this tree, everyone else) in each tenth of the wall time."""
        out, prev = [], (0.0, 0.0, 0.0)
        end = self.timeline[-1][0] if self.timeline else 0.0
        for k in range(1, 11):
            cut = [x for x in self.timeline if x[0] <= end * k / 10]
            if not cut or cut[-1][0] <= prev[0]:
                out.append((0.0, 0.0))
                continue
            t, ours, machine = cut[-1]
            dt = t - prev[0]
            out.append(
                (
                    round((ours - prev[1]) / dt, 2),
                    round(max(0.0, machine - prev[2] - ours + prev[1]) / dt, 2),
                )
            )
            prev = cut[-1]
        return out

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.join()
        wall = time.perf_counter() - self._t0
        busy = self._machine() - self._sys0
        ours = sum(self.cpu.values())
        order = sorted(self.cpu.items(), key=lambda x: -x[1])
        return {
            "peak_driver_rss_mib": round(self.peak["driver_rss"] / MiB, 1),
            "peak_workers_rss_mib": round(self.peak["workers_rss"] / MiB, 1),
            "peak_object_store_mib": round(self.peak["store_used"] / MiB, 1),
            "spilled_mib": round(self.peak["spilled"] / MiB, 1),
            "store_poll_error": self.store_error,
            "cpu_core_s": {k: round(v, 1) for k, v in order},
            "processes": {k: len(self.pids[k]) for k, _ in order},
            "sampled_wall_s": round(wall, 2),
            "cores_ours": round(ours / wall, 2),
            "cores_others": round(max(0.0, busy - ours) / wall, 2),
            "cores_by_tenth": self._busy_by_tenth(),
            "samples": self.samples,
        }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _ru_maxrss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _accepted_keys(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    from dubforge.ingest.records import clip_key

    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return sorted(
        clip_key(r["input_id"], r["clip_no"])
        for r in rows
        if r["clip_no"] >= 0 and r["status"] == "accepted"
    )


# ---------------------------------------------------------------------------------- runs


def _timed_writer(base: type) -> type:
    """UnitWriter that notes when each unit completes (seconds on perf_counter)."""

    class TimedWriter(base):
        done_at: list[float] = []

        def add(self, row: dict[str, Any]) -> str | None:
            unit = super().add(row)
            if unit:
                TimedWriter.done_at.append(time.perf_counter())
            return unit

    return TimedWriter


def run_sequential(cfg: Any, threads: int) -> dict[str, Any]:
    """The stages of the pipeline called one after another in this process, each timed."""
    import numpy as np

    from dubforge.ingest import pipeline, stages
    from dubforge.ingest.discover import discover
    from dubforge.ingest.plan import make_units, plan_unit
    from dubforge.ingest.writer import UnitWriter

    out = Path(cfg.output)
    shutil.rmtree(out, ignore_errors=True)
    times: dict[str, float] = Counter()

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        times[stage] += time.perf_counter() - t

    def one_by_one(fn: Callable[[Any], Any], batch: dict[str, Any]) -> dict[str, Any]:
        rows = [fn({"row": batch["row"][i : i + 1]})["row"][0] for i in range(len(batch["row"]))]
        col = np.empty(len(rows), dtype=object)
        col[:] = rows
        return {"row": col}

    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    with timed("discover"):
        units = make_units(discover(cfg.input).inputs, cfg.speech_unit)
        sr = pipeline.codec_sample_rate(cfg.codec.name_or_path)
    with timed("init (load models)"):
        decode = stages.Decode(cfg, sr)
        faces = stages.Faces(cfg, sr) if cfg.faces.enabled else None
        tokenize = stages.Tokenize(cfg)  # pins torch to 1 thread
        import torch

        torch.set_num_threads(threads or CORES)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    writer_cls = _timed_writer(UnitWriter)
    writer = writer_cls(out, cfg.shards.max_bytes, cfg.shards.max_samples, cfg.faces.face_fps)
    for unit in units:
        with timed("plan_unit"):
            rows = plan_unit(unit.to_dict(), cfg)
        for i in range(0, len(rows), 4):
            with timed("plan_unit"):
                batch = stages._batch(rows[i : i + 4])
            with timed("decode"):
                batch = decode(batch)
            with timed("require_stems"):
                batch = stages.require_stems(batch)
            with timed("energy"):
                batch = stages.energy(batch, cfg)
            if faces is not None:
                with timed("faces"):
                    batch = one_by_one(faces, batch)
            with timed("tokenize"):
                batch = tokenize(batch)
            with timed("write"):
                for r in batch["row"]:
                    writer.add(stages.unpack(r))
    with timed("summarize"):
        summary = pipeline.summarize(out, time.perf_counter() - t0, writer.rows_written, [])
    wall = time.perf_counter() - t0
    probe = sampler.stop()
    media = summary["this_run"]["media_seconds"]
    return {
        "mode": "sequential",
        "torch_threads": threads or CORES,
        "wall_s": round(wall, 2),
        "media_s": media,
        "media_s_per_s": round(media / wall, 3),
        "first_unit_s": round(writer_cls.done_at[0] - t0, 1) if writer_cls.done_at else None,
        "stage_s": {k: round(v, 2) for k, v in times.items()},
        "stage_share_pct": {k: round(100 * v / wall, 1) for k, v in times.items()},
        "clips_accepted": summary["clips_accepted"],
        "keys": _accepted_keys(out),
        "peak_driver_rss_mib_getrusage": _ru_maxrss_mib(),
        **probe,
    }


def _operator_stats(ds: Any) -> list[dict[str, Any]]:
    """Per Ray Data operator (the plan's fused operators, parents first): remote wall and CPU
    seconds summed over its tasks, time inside the stage functions (per fused stage where Ray
    reports it), and its span from first start to last end."""
    try:
        summary = ds.get_stats_summary()
    except Exception as e:  # noqa: BLE001 - stats are a bonus
        return [{"error": f"{type(e).__name__}: {e}"}]

    def total(s: Any) -> float | None:
        return round(s.sum, 2) if s is not None else None

    chain, todo = [], [summary]
    while todo:
        node = todo.pop()
        chain.append(node)
        todo += node.parents
    ops = []
    for node in reversed(chain):
        for s in node.operators_stats:
            stage_s = [total(x) for x in s.stage_time] if s.stage_time else None
            ops.append({
                "operator": s.operator_name, "wall_s": total(s.wall_time),
                "cpu_s": total(s.cpu_time), "udf_s": total(s.function_body_time),
                "stage_udf_s": stage_s, "span_s": round(s.time_total_s, 2),
            })  # fmt: skip
    return ops


class Chain:
    """Variant "chain": every per-clip stage in one actor, one actor per core (data parallel:
    no frames cross the object store, every model loaded once per actor)."""

    def __init__(self, cfg: Any, sample_rate: int) -> None:
        from dubforge.ingest import stages

        self.cfg = cfg
        self.decode = stages.Decode(cfg, sample_rate)
        self.faces = stages.Faces(cfg, sample_rate) if cfg.faces.enabled else None
        self.tokenize = stages.Tokenize(cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from dubforge.ingest import stages

        batch = stages.energy(stages.require_stems(self.decode(batch)), self.cfg)
        return self.tokenize(self.faces(batch) if self.faces else batch)


VARIANTS = {
    "default": "platform/ingest/pipeline.py's build_dataset as it is",
    "decode1": "the former layout: Decode as a pool of 1 actor, so decoded frames cross the "
    "object store (the default now runs decode as tasks fused into the Faces actors)",
    "chain": "all stages in one actor class, --codec-actors actors (one per core)",
}


def build_variant(units: list[dict[str, Any]], cfg: Any, sample_rate: int, variant: str) -> Any:
    """build_dataset with the pool layout of `variant` (stems delivered: no separator)."""
    import functools

    import ray
    from ray.data import ActorPoolStrategy

    from dubforge.ingest import stages
    from dubforge.ingest.plan import plan_unit

    assert not cfg.separator.model_dir, "variants cover the delivered-stems corpus only"
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    ds = ds.flat_map(lambda u: [{"row": stages.pack(r)} for r in plan_unit(u, cfg)])
    kw = {"cfg": cfg, "sample_rate": sample_rate}
    if variant == "chain":
        return ds.map_batches(
            Chain, fn_constructor_kwargs=kw, batch_size=4,
            compute=ActorPoolStrategy(size=cfg.codec.actors),
        )  # fmt: skip
    ds = ds.map_batches(stages.Decode, fn_constructor_kwargs=kw, batch_size=4,
                        compute=ActorPoolStrategy(size=1))  # fmt: skip
    ds = ds.map_batches(stages.require_stems, batch_size=8)
    ds = ds.map_batches(functools.partial(stages.energy, cfg=cfg), batch_size=8)
    if cfg.faces.enabled:
        ds = ds.map_batches(stages.Faces, fn_constructor_kwargs=kw, batch_size=1,
                            compute=ActorPoolStrategy(size=cfg.faces.actors))  # fmt: skip
    return ds.map_batches(
        stages.Tokenize, fn_constructor_kwargs={"cfg": cfg}, batch_size=4,
        compute=ActorPoolStrategy(size=cfg.codec.actors),
    )  # fmt: skip


def run_ray(cfg: Any, variant: str) -> dict[str, Any]:
    """`pipeline.run(cfg)` on a Ray this process starts (timed apart), sampled throughout."""
    import ray

    from dubforge.ingest import pipeline

    out = Path(cfg.output)
    shutil.rmtree(out, ignore_errors=True)
    captured: dict[str, Any] = {}
    build = pipeline.build_dataset

    def capture(units: list[dict[str, Any]], c: Any, sample_rate: int) -> Any:
        if variant == "default":
            captured["ds"] = build(units, c, sample_rate)
        else:
            captured["ds"] = build_variant(units, c, sample_rate, variant)
        return captured["ds"]

    pipeline.build_dataset = capture  # to read the executed dataset's stats afterwards
    writer_cls = pipeline.UnitWriter = _timed_writer(pipeline.UnitWriter)
    ray.data.DataContext.get_current().per_stage_map_timing = True  # split fused operators
    cpus = cfg.num_cpus or max(cfg.min_cpus(), CORES)  # what run() would start
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    # what runtime.ray_session does; run() then reuses this Ray
    ray.init(address="local", include_dashboard=False, log_to_driver=True, num_cpus=cpus)
    init_s = time.perf_counter() - t0
    store_cap = ray.cluster_resources().get("object_store_memory", 0)
    sampler = Sampler(gcs_address=ray.get_runtime_context().gcs_address)
    sampler.start()
    t1 = time.perf_counter()
    summary = pipeline.run(cfg)
    run_s = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    probe = sampler.stop()
    ops = _operator_stats(captured["ds"]) if "ds" in captured else []
    ray.shutdown()
    media = summary["this_run"]["media_seconds"]
    return {
        "mode": "ray",
        "variant": variant,
        "num_cpus": cpus,
        "wall_s": round(wall, 2),
        "ray_init_s": round(init_s, 2),
        "run_s": round(run_s, 2),
        "media_s": media,
        "media_s_per_s": round(media / wall, 3),
        "media_s_per_s_excl_init": round(media / run_s, 3),
        "first_unit_s": round(writer_cls.done_at[0] - t0, 1) if writer_cls.done_at else None,
        "clips_accepted": summary["clips_accepted"],
        "keys": _accepted_keys(out),
        "object_store_capacity_mib": round(store_cap / MiB),
        "driver_rss_before_mib": round(rss_before / MiB, 1),
        "peak_driver_rss_mib_getrusage": _ru_maxrss_mib(),
        "operators": ops,
        **probe,
    }


def child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; the result goes to args.result as JSON."""
    opts = vars(args)
    cfg = ingest_config(Path(args.corpus), Path(args.out), Path(args.codec), opts)
    load0 = _load()
    if args.child == "seq":
        res = run_sequential(cfg, args.seq_threads)
    else:
        res = run_ray(cfg, args.variant)
    res.update(load_before=load0, load_after=_load(), corpus=Path(args.corpus).name)
    Path(args.result).write_text(json.dumps(res, indent=1))


def spawn(mode: str, corpus: Path, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Run `child` in a new interpreter; its chatter goes to <workdir>/<tag>.log."""
    wd = Path(args.workdir)
    result, log = wd / f"{tag}.json", wd / f"{tag}.log"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", mode, "--corpus", str(corpus),
           "--out", str(wd / f"out-{tag}"), "--codec", str(wd / "codec"),
           "--result", str(result), "--seq-threads", str(args.seq_threads),
           "--codec-actors", str(args.codec_actors), "--faces-actors", str(args.faces_actors),
           "--variant", args.variant]  # fmt: skip
    cmd += ["--mel"] if args.mel else []
    cmd += ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
    print(f"{tag}: running ({mode} on {corpus.name}), log {log}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not result.exists():
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{tag} failed (exit {rc}); log tail:\n" + "\n".join(tail))
    res = json.loads(result.read_text())
    print(f"{tag}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return res


# ---------------------------------------------------------------------------------- report


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def report(res: dict[str, Any]) -> str:
    """The results as plain-text tables."""
    out = [f"machine: {CORES} cores; codec: full-size EnCodec 24 kHz, RANDOM weights "
           f"(speed only); mel={res['mel']}; variant={res['variant']}; "
           f"load avg (1/5/15 min) at start {res['load_start']}, "
           f"end {res['load_end']}"]  # fmt: skip
    runs = [r for r in [res.get("sequential"), *res["ray"].values()] if r]
    rows = [["run", "corpus", "media s", "wall s", "media-s/s", "ratio", "ray init s",
             "excl init", "1st unit s", "driver RSS MiB", "store peak MiB", "workers RSS MiB",
             "spilled MiB", "our cores", "others' cores", "media-s/core-s",
             "load 1m before->after"]]  # fmt: skip
    seq = res.get("sequential")
    for r in runs:
        is_ray = r["mode"] == "ray"
        ratio = f"{r['media_s_per_s'] / seq['media_s_per_s']:.2f}x" if seq and is_ray else "-"
        rows.append([
            r["tag"], r["corpus"], f"{r['media_s']:.1f}", f"{r['wall_s']:.1f}",
            f"{r['media_s_per_s']:.2f}", ratio,
            f"{r['ray_init_s']:.1f}" if is_ray else "-",
            f"{r['media_s_per_s_excl_init']:.2f}" if is_ray else "-",
            f"{r['first_unit_s']:.0f}" if r.get("first_unit_s") is not None else "-",
            f"{r['peak_driver_rss_mib_getrusage']:.0f}",
            f"{r['peak_object_store_mib']:.0f}" if is_ray else "-",
            f"{r['peak_workers_rss_mib']:.0f}" if is_ray else "-",
            f"{r['spilled_mib']:.0f}" if is_ray else "-",
            f"{r['cores_ours']:.2f}", f"{r['cores_others']:.2f}",
            f"{r['media_s'] / (r['cores_ours'] * r['sampled_wall_s']):.2f}",
            f"{r['load_before'][0]} -> {r['load_after'][0]}",
        ])  # fmt: skip
    out += ["", _table(rows)]
    out.append(
        "ratio: pipeline media-s/s / the sequential loop's (on the smallest corpus; target >= "
        "1.7x). cores: CPU "
        f"core-seconds / wall of this run's process tree and of everything else ({CORES} = all; "
        "Ray runs: after ray.init); media-s/core-s: media seconds per core-second of this "
        "run's processes, the figure least moved by other tenants. RSS/store: peaks."
    )
    if seq and res.get("same_keys") is not None:
        out.append(f"same accepted clip keys, sequential vs ray: {res['same_keys']}")
    if seq:
        rows = [["sequential stage", "seconds", "share of wall %"]]
        for k, v in sorted(seq["stage_s"].items(), key=lambda x: -x[1]):
            rows.append([k, f"{v:.1f}", f"{seq['stage_share_pct'][k]:.1f}"])
        out += ["", f"sequential loop, torch threads {seq['torch_threads']}:", _table(rows)]
    for r in runs:
        tenths = " ".join(f"{a:.1f}/{b:.1f}" for a, b in r["cores_by_tenth"])
        out.append(f"\n{r['tag']}: busy cores ours/others per tenth of the run: {tenths}")
        procs = r["processes"]
        cpu = ", ".join(
            f"{k} {v:.0f}" + (f" (x{procs[k]})" if procs.get(k, 1) > 1 else "")
            for k, v in list(r["cpu_core_s"].items())[:9]
        )
        out.append(f"  core-seconds by process kind: {cpu}")
        if r["mode"] != "ray":
            continue
        ops = [o for o in r["operators"] if "operator" in o]
        total = sum(o["wall_s"] or 0 for o in ops)
        rows = [["  ray operator", "remote wall s", "share %", "cpu s", "in stage fns s",
                 "span s"]]  # fmt: skip
        for o in ops:
            udf = "-" if o["udf_s"] is None else f"{o['udf_s']:.1f}"
            if o.get("stage_udf_s") and len(o["stage_udf_s"]) > 1:
                udf += " (" + " + ".join(f"{x:.1f}" for x in o["stage_udf_s"]) + ")"
            rows.append(["  " + o["operator"][:80], f"{o['wall_s'] or 0:.1f}",
                         f"{100 * (o['wall_s'] or 0) / total:.1f}" if total else "-",
                         "-" if o["cpu_s"] is None else f"{o['cpu_s']:.1f}", udf,
                         f"{o['span_s']:.1f}"])  # fmt: skip
        out.append(_table(rows))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movies", type=int, default=4, help="movies in the 1x corpus")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per movie")
    p.add_argument("--scale", type=int, nargs="+", default=[1, 4], help="corpus multiples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sequential", action="store_true")
    p.add_argument("--mel", action="store_true", help="codec.mel=true (log-mel per stem too)")
    p.add_argument("--workdir", default="runs/bench/ingest_speed")
    p.add_argument("--seq-threads", type=int, default=1, help="sequential torch threads (0: all)")
    p.add_argument("--codec-actors", type=int, default=1)
    p.add_argument("--faces-actors", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: run's choice)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="default",
                   help="pool layout (monkeypatched build_dataset):\n"
                   + "\n".join(f"  {k}: {v}" for k, v in VARIANTS.items()))  # fmt: skip
    p.add_argument("--child", choices=["seq", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--codec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    wd = Path(args.workdir).resolve()
    args.workdir = str(wd)
    wd.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"mel": args.mel, "variant": args.variant, "load_start": _load()}
    res["args"] = vars(args).copy()
    make_codec(wd / "codec")
    corpora = {k: make_corpus(wd, k * args.movies, args.duration, args.seed) for k in args.scale}
    if not args.skip_sequential:
        res["sequential"] = spawn("seq", corpora[min(args.scale)], args, "seq")
        res["sequential"]["tag"] = "sequential"
    res["ray"] = {}
    for k in args.scale:
        res["ray"][f"{k}x"] = spawn("ray", corpora[k], args, f"ray-{k}x")
        res["ray"][f"{k}x"]["tag"] = f"ray {k}x"
    res["load_end"] = _load()
    seq, first = res.get("sequential"), res["ray"][f"{min(args.scale)}x"]
    if seq:
        res["ratio"] = first["media_s_per_s"] / seq["media_s_per_s"]
        res["ratio_excl_init"] = first["media_s_per_s_excl_init"] / seq["media_s_per_s"]
        res["same_keys"] = seq["keys"] == first["keys"]
    text = report(res)
    print("\n" + text)
    (wd / "ingest_speed.json").write_text(json.dumps({**res, "report": text}, indent=1))
    print(f"\nresults: {wd / 'ingest_speed.json'}")


if __name__ == "__main__":
    main()
