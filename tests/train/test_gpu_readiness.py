"""What the GPU path (NCCL, bf16, ZeRO) needs, checked on CPU: collectives on the worker's device,
no host reads per micro-batch, lockstep epochs agreed once per optimizer step, validation on the
device within its time box, fp32 master weights in the export, and the doctor's DeepSpeed ops."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from dubforge.train import engine as eng
from dubforge.train import loop
from dubforge.train.config import CurriculumConfig, DeepSpeedSection
from dubforge.train.data import DataCounters, Item
from tests.train.conftest import debug_dict

META = torch.device("meta")


class _Reached(Exception):
    """Raised by the fake collective once it has seen its tensor."""


@pytest.fixture
def seen(monkeypatch) -> list[torch.device]:
    """Devices of the tensors that reach `torch.distributed.all_reduce` (which then raises)."""
    devices: list[torch.device] = []

    def fake(tensor, op=None, group=None, async_op=False):
        devices.append(tensor.device)
        raise _Reached

    monkeypatch.setattr(dist, "all_reduce", fake)
    return devices


@pytest.fixture(scope="module")
def group():
    """A single-process gloo group with the launcher's variables, as Ray Train sets up on a CPU
    worker."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    with pytest.MonkeyPatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


def _cfg(**deepspeed) -> CurriculumConfig:
    data = debug_dict(shards="/x")
    data["deepspeed"] = {**data["deepspeed"], **deepspeed}
    return CurriculumConfig.model_validate(data)


def _items(n: int) -> list[Item]:
    return [Item(record=None, task="tts", frames=10 + i) for i in range(n)]


def test_every_collective_of_the_loop_gets_a_tensor_on_the_loop_device(seen, monkeypatch):
    # a device other than the CPU, so that a tensor built on the host shows
    with pytest.raises(_Reached):
        eng.all_reduce([1.0, 2.0], device=META)
    with pytest.raises(_Reached):
        loop._Window(META).reduce(META, world=1)
    with pytest.raises(_Reached):
        loop._reduce_counters(DataCounters(rows=3), META)

    class EmptyShard:
        def iter_batches(self, **kwargs):
            return iter(())

    cfg = _cfg()
    stage = cfg.stages[0]
    monkeypatch.setattr(loop, "FrameBatcher", lambda *args: None)
    monkeypatch.setattr(loop, "micro_batches", lambda rows, batcher: iter(()))
    batches = loop._lockstep(
        EmptyShard(),
        None,
        stage,
        cfg,
        cfg.model,
        None,
        DataCounters(),
        {"wait": 0.0, "epoch": 0.0},
        META,
    )
    with pytest.raises(_Reached):
        next(batches)
    assert seen == [META] * 4


def test_all_reduce_sums_and_takes_the_minimum(group):
    out = eng.all_reduce([1, 2.5], device=torch.device("cpu"))
    assert out.dtype == torch.float64 and out.tolist() == [1.0, 2.5]
    assert eng.all_reduce(torch.tensor([3]), device=torch.device("cpu"), op="min").tolist() == [3]
    with pytest.raises(ValueError, match="op must be one of"):
        eng.all_reduce([1], device=torch.device("cpu"), op="max")


def test_window_adds_without_host_reads_and_reduces_the_sums(group, monkeypatch):
    window = loop._Window(torch.device("cpu"))
    losses = [
        {
            "loss": torch.tensor(v, requires_grad=True) * 1,
            "cfm": torch.tensor(v / 2),
            "dur": torch.tensor(v / 4),
        }
        for v in (1.0, 3.0)
    ]

    def host_read(*args, **kwargs):
        raise AssertionError("a host read of a device value in the hot path")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            m.setattr(torch.Tensor, name, host_read)
        for step_losses in losses:
            window.add(step_losses, _items(2))
    window.seconds, window.wait = 2.0, 0.5
    metrics = window.reduce(torch.device("cpu"), world=1)
    assert metrics["train/loss"] == pytest.approx(2.0)
    assert metrics["train/cfm"] == pytest.approx(1.0)
    assert metrics["train/dur"] == pytest.approx(0.5)
    assert metrics["train/samples"] == 4 and metrics["tasks/tts"] == 4
    assert metrics["train/samples_per_s"] == pytest.approx(2.0)
    assert metrics["train/data_wait_frac"] == pytest.approx(0.25)


def test_lockstep_agrees_once_per_step_and_keeps_the_shortest_workers_count(monkeypatch):
    """grad_accum 2; this worker has 5 micro-batches an epoch, the other 3: each epoch yields this
    worker's first 3 (as a per-micro-batch agreement would), with one agreement per 2."""
    mine, other, chunk = 5, 3, 2
    left = {"other": other}
    calls = []

    def fake(tensor, op=None, group=None, async_op=False):
        assert op == dist.ReduceOp.MIN
        n = min(int(tensor[0]), min(chunk, left["other"]))
        left["other"] -= n
        if n < chunk:  # the epoch ends for both
            left["other"] = other
        calls.append(n)
        tensor.fill_(n)

    epochs = iter(range(100))

    def batches(rows, batcher):
        e = next(epochs)
        return iter([[Item(record=None, task="tts", frames=100 * e + i)] for i in range(mine)])

    monkeypatch.setattr(dist, "all_reduce", fake)
    monkeypatch.setattr(loop, "FrameBatcher", lambda *args: None)
    monkeypatch.setattr(loop, "iter_rows", lambda b: iter(()))
    monkeypatch.setattr(loop, "micro_batches", batches)
    monkeypatch.setattr(loop, "collate", lambda records, space, **kwargs: "batch")

    class Shard:
        def iter_batches(self, **kwargs):
            return iter(())

    cfg = _cfg(grad_accum=chunk)
    timer = {"wait": 0.0, "epoch": 0.0}
    gen = loop._lockstep(
        Shard(),
        None,
        cfg.stages[0],
        cfg,
        cfg.model,
        None,
        DataCounters(),
        timer,
        torch.device("cpu"),
    )
    frames = [next(gen)[0][0].frames for _ in range(9)]
    gen.close()
    assert frames == [0, 1, 2, 100, 101, 102, 200, 201, 202]
    assert calls[:4] == [2, 1, 2, 1] and timer["epoch"] >= 2


@dataclass(frozen=True)
class _FakeBatch:
    latents: torch.Tensor


class _SlowModel(torch.nn.Module):
    """Records where and under which autocast its loss runs; each loss takes `delay` s."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.calls: list[tuple[torch.device, bool]] = []

    def loss(self, batch, generator=None):
        self.calls.append((batch.latents.device, torch.is_autocast_enabled("cpu")))
        time.sleep(self.delay)
        return {"loss": torch.tensor(2.0)}


def test_validation_runs_under_autocast_on_the_device_and_stops_at_its_time_box(monkeypatch):
    generated = []
    monkeypatch.setattr(loop, "collate", lambda recs, space, **kw: _FakeBatch(torch.zeros(2)))
    monkeypatch.setattr(loop, "_generate", lambda *args: generated.append(args))
    data = debug_dict(shards="/x")
    data["deepspeed"]["precision"] = "bf16"
    data["tracking"]["validation_time_s"] = 0.08
    cfg = CurriculumConfig.model_validate(data)
    model = _SlowModel(delay=0.05)
    mine = [(None, "tts"), (None, "tts")]
    total, draws = loop._validate(
        model, mine, None, cfg, device=torch.device("cpu"), step=0, tracker=loop.Tracker(None, None)
    )
    assert 1 <= len(model.calls) < loop.VAL_DRAWS  # the box cut the draws short
    assert draws == len(model.calls) * 2 and total == pytest.approx(2.0 * draws)
    assert not generated  # no generation started past the box
    assert all(dev == torch.device("cpu") and amp for dev, amp in model.calls)

    fast = _SlowModel(delay=0.0)
    cfg = cfg.model_copy(
        update={"tracking": cfg.tracking.model_copy(update={"validation_time_s": 60.0})}
    )
    total, draws = loop._validate(
        fast, mine, None, cfg, device=torch.device("cpu"), step=0, tracker=loop.Tracker(None, None)
    )
    assert len(fast.calls) == loop.VAL_DRAWS and len(generated) == 1
    assert loop._validate(
        fast, [(None, "")], None, cfg, device=torch.device("cpu"), step=0, tracker=None
    ) == (0.0, 0)


def test_validation_time_box_stays_below_the_process_group_timeout():
    data = debug_dict(shards="/x")
    data["tracking"]["validation_time_s"] = 3600
    with pytest.raises(ValueError, match="validation_time_s"):
        CurriculumConfig.model_validate(data)


class _Scale(torch.nn.Module):
    """x * a fixed persistent buffer; a non-persistent one beside it."""

    VALUE = torch.full((4,), 0.5)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", self.VALUE.clone())
        self.register_buffer("scratch", torch.zeros(4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@pytest.mark.parametrize("zero", [2, 3])
def test_export_holds_the_fp32_masters_not_the_bf16_module_weights(group, zero):
    pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4), _Scale())
    frozen = eng.fp32_copy(model, eng.freeze(model, ["0"]))
    ds = DeepSpeedSection(zero_stage=zero, precision="bf16", grad_clip=0)
    ds_cfg = eng.ds_config(ds, micro_batch=4, world_size=1, use_gpu=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _ = eng.initialize(
        model, trainable, eng.client_optimizer(trainable, ds, ds_cfg), ds_cfg
    )
    eng.set_lr(engine.optimizer, 1e-3)
    for _ in range(3):
        loss = engine(torch.randn(4, 8, dtype=torch.bfloat16)).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    state = eng.consolidated_state(engine, frozen=frozen)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert set(state) == set(model.state_dict())
    # persistent buffers come from the module, back in fp32; non-persistent ones stay out
    assert state["2.scale"].dtype == torch.float32 and torch.equal(state["2.scale"], _Scale.VALUE)
    if zero == 3:
        masters = engine.optimizer.fp32_partitioned_groups_flat[0]
    else:
        masters = engine.optimizer.single_partition_of_fp32_groups[0]
    exported = torch.cat([state[n].flatten() for n in ("1.weight", "1.bias")])
    assert torch.equal(masters[: exported.numel()], exported)
    for name in frozen:  # the values before DeepSpeed's bf16 cast
        assert torch.equal(state[name], frozen[name])
    if zero == 2:  # ZeRO-3's module holds only partitions
        module = engine.module.state_dict()
        rounded = module["1.weight"].float()
        assert module["1.weight"].dtype == torch.bfloat16
        assert not torch.equal(state["1.weight"], rounded)
        assert torch.equal(state["1.weight"].bfloat16().float(), rounded)
    assert eng.consolidated_state(engine, frozen=frozen, all_ranks=True).keys() == state.keys()


_START_UNDER_A_STALE_LOCK = """
import os, socket, sys
import torch
from torch.utils.cpp_extension import _get_build_directory
from dubforge.train import engine as eng
from dubforge.train.config import DeepSpeedSection

lock = os.path.join(_get_build_directory("deepspeed_shm_comm", False), "lock")
open(lock, "w").close()  # what a build killed mid-way leaves behind
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(port))
model = torch.nn.Linear(4, 4)
ds = DeepSpeedSection(zero_stage=2, precision="bf16", grad_clip=0)
cfg = eng.ds_config(ds, micro_batch=2, world_size=1, use_gpu=False)
params = list(model.parameters())
if sys.argv[1] == "raw":
    import deepspeed
    deepspeed.initialize(model=model, model_parameters=params,
                         optimizer=eng.client_optimizer(params, ds, cfg), config=cfg)
else:
    eng.initialize(model, params, eng.client_optimizer(params, ds, cfg), cfg)
print("started", os.path.exists(lock))
"""


def test_deepspeed_starts_without_compiling_and_past_a_stale_build_lock(tmp_path):
    """A killed JIT build leaves its lock file; DeepSpeed's CPU start used to wait on it forever
    (how a CI run hung for 15 minutes per test). The engine turns JIT-only comm ops off."""
    import subprocess
    import sys

    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    result = subprocess.run(
        [sys.executable, "-c", _START_UNDER_A_STALE_LOCK, "engine"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "started True" in result.stdout
    assert eng.no_jit_comm_ops() == ["deepspeed_shm_comm"]  # not prebuilt in this install
    built = list((tmp_path / "ext").rglob("*.so"))
    assert built == []  # nothing was compiled


def test_doctor_lists_deepspeed_ops(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from dubforge.cli import app

    monkeypatch.setenv("DUBFORGE_WORKSPACE", str(tmp_path))
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    ops = json.loads(result.stdout)["deepspeed_ops"]
    assert ops["accelerator"] in ("cpu", "cuda")
    for name in ("fused_adam", "cpu_adam", "deepspeed_shm_comm"):
        assert set(ops[name]) == {"prebuilt", "jit"}
        assert all(isinstance(v, bool) for v in ops[name].values())
