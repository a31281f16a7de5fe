"""The Ray Train worker loop of one curriculum stage (`train_loop_per_worker` of a TorchTrainer):
DeepSpeed initialised inside the worker, data from the worker's streaming dataset shard.

Each step is `deepspeed.grad_accum` micro-batches per worker. A thread per worker reads its
split, batches and collates micro-batches ahead of the step (`_Prefetcher`), in pinned memory on
a GPU so the copy to the device runs asynchronously; the time the step waits for it is the
data-wait fraction. Workers draw micro-batches in lockstep: before each `grad_accum` of them
they agree (one all-reduce) how many all of them still have in this epoch; the first worker to
run out ends the epoch for everyone, and the others drain what is left of their split so the
next epoch starts cleanly. Without this, a worker whose frame-budget batches ran out first would
wait for the next epoch while the others wait for it in a gradient all-reduce.

Every collective goes through `engine.all_reduce`, which puts its tensor on the worker's device
(NCCL reduces only CUDA tensors). Losses are summed on the device and read by the host only
every `tracking.log_every` steps: a host read per micro-batch would stall the GPU's queue.

Checkpoints (every `checkpoint.every` steps and at the stage's end) hold DeepSpeed's sharded
state (`ds/`, one optimizer shard per rank, merged by Ray in storage), `state.json` and, at the
end, the consolidated inference export (`export/`). A restarted worker group resumes from the
latest one: same step, new data epoch.

Rank 0 logs to the stage's MLflow run (`run_id` from the driver): losses, LR, grad norm,
samples/s, latent frames/s, data-wait fraction, data counters; validation every
`tracking.validate_every` steps (fixed-draw loss + generated wav/PNG as artifacts). Validation
runs on every rank, each on its share of the clips, on the device and under the training
autocast, within `tracking.validation_time_s`; the ranks then meet in one all-reduce, so no rank
waits in a collective longer than the time box while another validates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pickle
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dubforge.model.batch import TASK_STREAMS, TASKS, Batch, Record, collate, to_waves
from dubforge.model.checkpoint import save_checkpoint
from dubforge.model.config import ModelConfig
from dubforge.model.presets import build_model, sampler_kwargs, space_from_config
from dubforge.train import engine as eng
from dubforge.train.config import CurriculumConfig, Stage
from dubforge.train.data import DataCounters, FrameBatcher, Item, iter_rows, micro_batches

log = logging.getLogger(__name__)
CKPT_TAG = "ds"
STATE = "state.json"
EXPORT = "export"
VAL_DRAWS = 4


def stage_model_config(cfg: CurriculumConfig, stage: Stage) -> ModelConfig:
    """The model config with the stage's dropout and loss overrides applied."""
    update: dict[str, Any] = {}
    if stage.dropout is not None:
        update["dropout"] = stage.dropout
    if stage.loss.dur_weight is not None:
        update["loss"] = cfg.model.loss.model_copy(update={"dur_weight": stage.loss.dur_weight})
    return cfg.model.model_copy(update=update)


def load_export_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load an export's weights into `model` (same preset and space), strictly."""
    from dubforge.model.checkpoint import load_state

    state = load_state(Path(folder))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"export {folder} does not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; the stages must share model.preset and model.space"
        )


def validation_tasks(records: list[Record], space: Any, tasks: dict[str, float]) -> list[str]:
    """Per validation record, the stage's heaviest task it supports (deterministic)."""
    from dubforge.model.batch import supported_tasks

    order = sorted(tasks, key=lambda t: -tasks[t])
    out = []
    for _, arrays in records:
        ok = supported_tasks(arrays, space)
        out.append(next((t for t in order if t in ok), ""))
    return out


class Tracker:
    """Rank-0 MLflow logging into an existing run (no-op without a run id)."""

    def __init__(self, uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        self.client = None
        if run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if np.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=batch)

    def artifacts(self, folder: Path, path: str) -> None:
        if self.client is not None:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)

    def tag(self, key: str, value: str) -> None:
        if self.client is not None:
            self.client.set_tag(self.run_id, key, value)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry: `config` = {"cfg": resolved config dict, "stage": name, "init": export
    folder or None, "run_id": MLflow run, "tracking_uri", "validation": pickled records}."""
    import ray.train
    import torch.distributed as dist

    cfg = CurriculumConfig.model_validate(config["cfg"])
    stage = next(s for s in cfg.stages if s.name == config["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.scaling.threads_per_worker)
    torch.manual_seed(cfg.seed * 1000 + rank)
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    space = space_from_config(cfg.model.space, device="cpu")
    model_cfg = stage_model_config(cfg, stage)
    model = build_model(model_cfg, space)
    tracker = Tracker(config.get("tracking_uri"), config.get("run_id") if rank == 0 else None)

    restored = ray.train.get_checkpoint()
    info: dict[str, Any] = {"rank": rank, "world": world, "resumed_from": None}
    if config.get("init") and (restored is None or stage.freeze):
        # on a resume too when modules are frozen: their fp32 values (exported at the end)
        # come from the init export, the checkpoint holds them only in the training dtype
        load_export_weights(model, config["init"])
    frozen = eng.freeze(model, stage.freeze)
    frozen_fp32 = eng.fp32_copy(model, frozen)  # DeepSpeed casts them to bf16 below
    if rank == 0 and restored is None:
        info["init_digest"] = eng.state_digest(model.state_dict())
        info["frozen_digest"] = eng.state_digest(model.state_dict(), frozen) if frozen else ""
    trainable = [p for p in model.parameters() if p.requires_grad]
    ds_cfg = eng.ds_config(
        cfg.deepspeed,
        micro_batch=cfg.data.max_samples,
        world_size=world,
        use_gpu=cfg.scaling.use_gpu,
    )
    opt = eng.client_optimizer(trainable, cfg.deepspeed, ds_cfg)
    engine, optimizer = eng.initialize(model, trainable, opt, ds_cfg)
    step, epoch = 0, 0
    if restored is not None:
        with restored.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=CKPT_TAG)
            step, epoch = int(client["step"]), int(client["epoch"]) + 1
        info["resumed_from"] = step
        log.warning("rank %d: resumed stage %s at step %d", rank, stage.name, step)
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    info["nodes"] = sorted(set(nodes))
    if rank == 0:
        tracker.tag("nodes", ",".join(info["nodes"]))
        if info["resumed_from"] is not None:
            tracker.tag(f"resumed_from_step.{int(time.time())}", str(step))

    validation = pickle.loads(config["validation"]) if config.get("validation") else []
    val_tasks = validation_tasks(validation, space, stage.tasks)
    counters = DataCounters()
    rng = np.random.default_rng([cfg.seed, rank, epoch, step])
    shard = ray.train.get_dataset_shard("train")
    timer = {"wait": 0.0, "epoch": float(epoch)}
    batches = _lockstep(shard, space, stage, cfg, model_cfg, rng, counters, timer, device)

    def checkpoint(final: bool, metrics: dict[str, float]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="dubforge-ckpt-"))
        client_state = {"step": step, "epoch": int(timer["epoch"])}
        engine.save_checkpoint(str(tmp), tag=CKPT_TAG, client_state=client_state)
        state = eng.consolidated_state(engine, frozen=frozen_fp32) if final else None
        if rank == 0:
            if state is not None:
                export = build_model(model_cfg, space)
                export.load_state_dict(state)
                save_checkpoint(
                    tmp / EXPORT,
                    export,
                    model_cfg,
                    space,
                    stage=stage.name,
                    step=step,
                    metrics=metrics,
                )
            (tmp / STATE).write_text(
                json.dumps(
                    {
                        "stage": stage.name,
                        "step": step,
                        "epoch": int(timer["epoch"]),
                        "final": final,
                        **info,
                        "metrics": metrics,
                    },
                    indent=2,
                )
            )
        ray.train.report(
            {"step": step, "final": final, **metrics},
            checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
            checkpoint_dir_name=f"step-{step:08d}",
        )
        shutil.rmtree(tmp, ignore_errors=True)

    def validate() -> dict[str, float]:
        if not validation:
            return {}
        state = eng.consolidated_state(engine, frozen=frozen_fp32, all_ranks=True)
        copy = build_model(model_cfg, space)
        copy.load_state_dict(state)
        mine = [(validation[i], val_tasks[i]) for i in range(rank, len(validation), world)]
        loss_sum, draws = _validate(
            copy.to(device).eval(),
            mine,
            space,
            cfg,
            device=device,
            step=step,
            tracker=tracker if rank == 0 else None,
        )
        loss_sum, draws = eng.all_reduce([loss_sum, draws], device=device).tolist()
        metrics = {"val/loss": loss_sum / draws} if draws else {}
        if rank == 0:
            tracker.metrics(metrics, step)
        return metrics

    gas = cfg.deepspeed.grad_accum
    window = _Window(device)
    last: dict[str, float] = {}
    if step == 0 and validation:
        last.update(validate())  # the stage's starting point
    engine.train()
    while step < stage.steps:
        t_step = time.perf_counter()
        eng.set_lr(engine.optimizer, eng.lr_at(step, stage))
        for _ in range(gas):
            timer["wait"] = 0.0
            items, batch = next(batches)
            batch = _to_device(batch, device)
            window.wait += timer["wait"]
            with _autocast(cfg, device):
                losses = engine(batch)
            engine.backward(losses["loss"] + _touch(trainable, cfg.deepspeed.zero_stage))
            engine.step()
            window.add(losses, items)
        step += 1
        window.seconds += time.perf_counter() - t_step
        if step % cfg.tracking.log_every == 0 or step == stage.steps:
            grad_norm = engine.get_global_grad_norm()
            metrics = window.reduce(device, world)
            metrics.update(
                {
                    "train/lr": eng.lr_at(step - 1, stage),
                    "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "train/epoch": timer["epoch"],
                }
            )
            totals = _reduce_counters(counters, device)
            metrics.update(totals)
            _check_bad(totals, cfg.data.max_bad_records)
            if rank == 0:
                tracker.metrics(metrics, step)
            last.update(metrics)
            window = _Window(device)
        if step % cfg.tracking.validate_every == 0 or step == stage.steps:
            last.update(validate())
        if step % cfg.checkpoint.every == 0 or step == stage.steps:
            final = step == stage.steps
            checkpoint(final, {k: v for k, v in last.items() if np.isfinite(v)})
    with contextlib.suppress(StopIteration):
        batches.close()


def _touch(params: list[torch.nn.Parameter], zero_stage: int) -> torch.Tensor | float:
    """0 x one element of every trainable parameter: a micro-batch without video (tts) leaves
    the video encoders without gradients on that worker while another worker's v2a batch has
    them, and ZeRO-1/2's gradient reduction would then differ across workers and abort. ZeRO-3
    handles unused parameters itself (`ignore_unused_parameters`)."""
    if zero_stage == 3:
        return 0.0
    return 0.0 * sum(p.reshape(-1)[0] for p in params)


class _Window:
    """Sums over the steps between two metric logs: losses on the device (no host read per
    micro-batch), counts on the host (they come from the items, known without a sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.losses = torch.zeros(3, dtype=torch.float64, device=device)  # loss, cfm, dur
        self.micro = self.samples = self.frames = 0
        self.wait = self.seconds = 0.0
        self.tasks: dict[str, int] = {}

    def add(self, losses: dict[str, torch.Tensor], items: list[Item]) -> None:
        parts = [losses[k].detach().to(torch.float64) for k in ("loss", "cfm", "dur")]
        self.losses += torch.stack(parts)
        self.micro += 1
        self.samples += len(items)
        self.frames += sum(it.frames * len(TASK_STREAMS[it.task]) for it in items)
        for it in items:
            self.tasks[it.task] = self.tasks.get(it.task, 0) + 1

    def reduce(self, device: torch.device, world: int) -> dict[str, float]:
        """Sums over all workers (every worker must call it)."""
        tasks = [self.tasks.get(t, 0) for t in TASKS]
        counts = [self.micro, self.samples, self.frames, self.wait, self.seconds, *tasks]
        counts_t = torch.tensor(counts, dtype=torch.float64).to(self.losses.device)
        v = eng.all_reduce(torch.cat([self.losses, counts_t]), device=device).tolist()
        loss, cfm, dur, micro, samples, frames, wait, seconds = v[:8]
        tasks = dict(zip(TASKS, v[8:], strict=True))
        wall = seconds / world  # each worker's wall time of the window, averaged
        return {
            "train/loss": loss / micro,
            "train/cfm": cfm / micro,
            "train/dur": dur / micro,
            "train/samples_per_s": samples / wall,
            "train/frames_per_s": frames / wall,
            "train/data_wait_frac": wait / seconds,
            "train/samples": samples,
            **{f"tasks/{k}": n for k, n in tasks.items() if n},
        }


def _reduce_counters(counters: DataCounters, device: torch.device) -> dict[str, float]:
    values = counters.as_dict()
    totals = eng.all_reduce(list(values.values()), device=device).tolist()
    return dict(zip(values, totals, strict=True))


def _autocast(cfg: CurriculumConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on the worker's device in bf16 training (a no-op context in fp32)."""
    if cfg.deepspeed.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _pinned(batch: Batch) -> Batch:
    """The batch in page-locked memory, so that the copy to a GPU can run asynchronously."""
    moved = {
        f.name: getattr(batch, f.name).pin_memory()
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return dataclasses.replace(batch, **moved)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device`; non-blocking from pinned memory on a GPU, as `Batch.to` on CPU."""
    if device.type == "cpu":
        return batch
    moved = {
        f.name: getattr(batch, f.name).to(device, non_blocking=True)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return dataclasses.replace(batch, **moved)


def _check_bad(totals: dict[str, float], limit: float) -> None:
    rows, bad = totals["data/rows"], totals["data/bad_records"]
    if rows >= 20 and bad > limit * rows:
        raise RuntimeError(
            f"{int(bad)} of {int(rows)} records were rejected (more than "
            f"data.max_bad_records={limit}); see the workers' log for the reasons"
        )


class _Prefetcher:
    """Runs a worker's data path (its split's rows -> FrameBatcher -> collate) in a thread,
    `depth` micro-batches ahead of the training step, epoch after epoch, with END after each
    epoch. Collectives stay in the main thread."""

    END = object()

    def __init__(self, epoch: Callable[[], Iterator[Any]], depth: int = 2) -> None:
        self._epoch = epoch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dubforge-data", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for item in self._epoch():
                    self._put(item)
                    if self._stop.is_set():
                        return
                self._put(self.END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
            self._put(_Failed(e))

    def get(self) -> Any:
        item = self._queue.get()
        if isinstance(item, _Failed):
            raise RuntimeError(f"the data thread failed: {item.error!r}") from item.error
        return item

    def close(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _lockstep(
    shard: Any,
    space: Any,
    stage: Stage,
    cfg: CurriculumConfig,
    model_cfg: ModelConfig,
    rng: np.random.Generator,
    counters: DataCounters,
    timer: dict[str, float],
    device: torch.device,
) -> Iterator[tuple[list[Item], Any]]:
    """Endless (items, collated batch) over epochs, with epoch ends agreed by all workers; the
    time spent waiting for the data thread is added to timer["wait"].

    Workers agree once per `grad_accum` micro-batches, not per micro-batch: each takes up to
    that many from its thread and all keep the smallest count (an all-reduce MIN, read by the
    host once per optimizer step, where the step syncs anyway). The items yielded are the same
    as with a per-micro-batch agreement: each worker's first k of the epoch, k the smallest
    count of any worker."""
    pin = device.type == "cuda"

    def epoch() -> Iterator[tuple[list[Item], Any]]:
        batcher = FrameBatcher(space, stage.tasks, cfg.data, rng, counters)
        rows = iter_rows(
            shard.iter_batches(
                batch_size=16,
                batch_format="pandas",
                prefetch_batches=2,
                local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            )
        )
        for items in micro_batches(rows, batcher):
            batch = collate(
                [it.record for it in items],
                space,
                tasks=[it.task for it in items],
                train=True,
                span_frac=model_cfg.loss.span_frac,
                seed=rng,
                activity_db=model_cfg.loss.activity_db,
            )
            yield items, _pinned(batch) if pin else batch

    chunk = cfg.deepspeed.grad_accum
    prefetch = _Prefetcher(epoch, depth=max(2, chunk))
    try:
        while True:
            produced, ended = 0, False
            while not ended:
                t0 = time.perf_counter()
                got = []
                while len(got) < chunk:
                    item = prefetch.get()
                    if item is _Prefetcher.END:
                        ended = True
                        break
                    got.append(item)
                timer["wait"] += time.perf_counter() - t0
                n = int(eng.all_reduce([len(got)], device=device, op="min")[0])
                if n < chunk:
                    while not ended:  # drain this worker's rest of the epoch
                        ended = prefetch.get() is _Prefetcher.END
                    timer["epoch"] += 1
                    ended = True
                produced += n
                yield from got[:n]
            if produced == 0:
                raise RuntimeError(
                    f"stage {stage.name!r}: a worker's split of an epoch held no usable "
                    f"micro-batch for tasks {list(stage.tasks)} (this worker: rows "
                    f"{counters.rows}, rejected {counters.bad_records}, no usable task "
                    f"{counters.no_task}); the stage needs more usable records than workers"
                )
    finally:
        prefetch.close()


def _validate(
    model: torch.nn.Module,
    mine: list[tuple[Record, str]],
    space: Any,
    cfg: CurriculumConfig,
    *,
    device: torch.device,
    step: int,
    tracker: Tracker | None,
) -> tuple[float, int]:
    """This rank's share of validation: (sum of fixed-draw losses, number of draws) on its
    clips, and (with a tracker) generated audio logged as artifacts. Runs on `device` under the
    training autocast and stops starting new work once `tracking.validation_time_s` is spent,
    so the other ranks, waiting in the all-reduce after it, are held at most that long."""
    usable = [(r, t) for r, t in mine if t]
    if not usable:
        return 0.0, 0
    deadline = time.monotonic() + cfg.tracking.validation_time_s
    recs, ts = [r for r, _ in usable], [t for _, t in usable]
    losses = []
    with torch.no_grad(), _autocast(cfg, device):
        for d in range(VAL_DRAWS):
            if time.monotonic() > deadline:
                break
            batch = _to_device(collate(recs, space, tasks=ts, train=True, seed=1000 + d), device)
            g = torch.Generator().manual_seed(2000 + d)
            losses.append(model.loss(batch, g)["loss"].float())
        if tracker is not None and time.monotonic() < deadline:
            _generate(model, recs, ts, space, cfg, device, step, tracker)
    if len(losses) < VAL_DRAWS or time.monotonic() > deadline:
        limit = cfg.tracking.validation_time_s
        log.warning(
            "validation at step %d reached tracking.validation_time_s=%s (%d of %d draws)",
            step,
            limit,
            len(losses),
            VAL_DRAWS,
        )
    # weighted by clips, so that the ranks' shares average to a per-clip mean
    total = float(torch.stack(losses).sum()) * len(recs) if losses else 0.0
    return total, len(losses) * len(recs)


def _generate(
    model: torch.nn.Module,
    recs: list[Record],
    ts: list[str],
    space: Any,
    cfg: CurriculumConfig,
    device: torch.device,
    step: int,
    tracker: Tracker,
) -> None:
    """Generate the clips from a 30 % reference and log wav/PNG artifacts."""
    from dubforge.eval.report import save_sample

    refs = []
    for meta, arrays in recs:
        n = max(
            (v.shape[-1] for k, v in arrays.items() if k.endswith((".mel", ".codes"))), default=0
        )
        refs.append((dataclasses.replace(meta, ref_frames=int(0.3 * n)), arrays))
    batch = collate(refs, space, tasks=ts, train=False, seed=0)
    kwargs = sampler_kwargs(cfg.model)
    kwargs["nfe"] = cfg.tracking.validation_nfe
    latents = model.sample(_to_device(batch, device), seed=0, **kwargs)
    waves = to_waves(space, latents.float().cpu(), batch)
    out = Path(tempfile.mkdtemp(prefix="dubforge-val-"))
    try:
        for i, (w, t) in enumerate(zip(waves, ts, strict=True)):
            for stem, x in w.items():
                if np.abs(x).max() > 0:
                    save_sample(out, f"{i:02d}-{t}-{stem}", x, space.sample_rate)
        tracker.artifacts(out, f"validation/step-{step:08d}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
