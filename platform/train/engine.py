"""DeepSpeed from the typed config: the ZeRO config dict, the optimizer choice, the LR schedule,
frozen modules, parameter digests and the consolidated fp32 export.

Optimizers (measured on CPU + gloo, FACTS.md): ZeRO-1/2 take a client `torch.optim.AdamW`
(`zero_allow_untested_optimizer`); ZeRO-3 gets DeepSpeed's AdamW with `torch_adam: true`;
optimizer offload uses DeepSpeed's CPUAdam (JIT-compiled once into TORCH_EXTENSIONS_DIR).

On GPU every stage gets DeepSpeed's AdamW with `torch_adam: true` and `fused: true`, i.e. torch's
fused CUDA AdamW. DeepSpeed's own `FusedAdam` is JIT-built with nvcc at `deepspeed.initialize`,
and pip's CUDA torch brings no nvcc: the first GPU run would fail (or stall minutes per worker)
before its first step. torch's fused kernel ships compiled inside torch and is as fast for
AdamW. `dubforge doctor` lists which DeepSpeed ops are prebuilt and which could be JIT-built.

DeepSpeed's communication layer JIT-compiles its shared-memory all-reduce
(`deepspeed_shm_comm`) at every CPU start unless it was prebuilt. The build runs behind a lock
file in TORCH_EXTENSIONS_DIR, and a build that is killed (a worker lost, a job stopped) leaves the
lock behind: every later start on that machine then waits on it forever. `initialize` turns
JIT-only communication ops off, so gloo's all-reduce serves CPU runs and nothing compiles at
start-up; a prebuilt op is still used.

Gradients are reduced in fp32 (`communication_data_type`) in bf16 training: bf16's 8-bit
mantissa would round away small gradient contributions summed over many ranks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dubforge.train.config import DeepSpeedSection, Stage


def lr_at(step: int, stage: Stage) -> float:
    """Linear warm-up from lr min to lr max over `warmup_steps`, then cosine back to lr min at
    the stage's last step (DualDub 5.2: a range per stage, cosine with warm-up)."""
    lo, hi = stage.lr
    if step < stage.warmup_steps:
        return lo + (hi - lo) * (step + 1) / stage.warmup_steps
    span = max(1, stage.steps - stage.warmup_steps - 1)
    progress = min(1.0, (step - stage.warmup_steps) / span)
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * progress))


def ds_config(
    ds: DeepSpeedSection, *, micro_batch: int, world_size: int, use_gpu: bool
) -> dict[str, Any]:
    """The DeepSpeed config dict. `micro_batch` is nominal (the batcher decides real sizes)."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=use_gpu, contiguous_gradients=True, reduce_scatter=True)
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": ds.grad_accum,
        "train_batch_size": micro_batch * ds.grad_accum * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "communication_data_type": "fp32",
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.grad_clip > 0:
        cfg["gradient_clipping"] = ds.grad_clip
    params = {"lr": 1e-4, "betas": list(ds.betas), "eps": ds.eps, "weight_decay": ds.weight_decay}
    if ds.offload_optimizer:
        cfg["optimizer"] = {"type": "AdamW", "params": params}
    elif use_gpu:  # torch's fused CUDA AdamW: no nvcc at start-up (module docstring)
        fused = {**params, "torch_adam": True, "fused": True}
        cfg["optimizer"] = {"type": "AdamW", "params": fused}
    elif ds.zero_stage == 3:
        cfg["optimizer"] = {"type": "AdamW", "params": {**params, "torch_adam": True}}
    else:
        cfg["zero_allow_untested_optimizer"] = True
    return cfg


def all_reduce(
    values: torch.Tensor | Sequence[float], *, device: torch.device, op: str = "sum"
) -> torch.Tensor:
    """All-reduce `values` (float64) across the workers, on `device`, in place of every direct
    `torch.distributed.all_reduce` of the training loop: NCCL reduces only tensors on the GPU
    ("No backend type associated with device type cpu"), so host-built tensors move first."""
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"all_reduce op must be one of {list(ops)}; got {op!r}")
    t = torch.as_tensor(values, dtype=torch.float64).to(device)
    dist.all_reduce(t, op=ops[op])
    return t


def client_optimizer(
    params: Iterable[nn.Parameter], ds: DeepSpeedSection, config: Mapping[str, Any]
) -> torch.optim.Optimizer | None:
    """The torch optimizer to hand to deepspeed.initialize, or None when the config names one."""
    if "optimizer" in config:
        return None
    return torch.optim.AdamW(
        list(params), lr=1e-4, betas=ds.betas, eps=ds.eps, weight_decay=ds.weight_decay
    )


JIT_COMM_OPS = ("deepspeed_shm_comm",)


def no_jit_comm_ops() -> list[str]:
    """Mark DeepSpeed's communication ops that are not prebuilt as unavailable, so
    `deepspeed.initialize` uses torch.distributed instead of compiling them; returns the names
    turned off."""
    import deepspeed.ops
    from deepspeed.git_version_info import installed_ops

    off = [n for n in JIT_COMM_OPS if not installed_ops.get(n)]
    for name in off:
        deepspeed.ops.__compatible_ops__[name] = False
    return off


def initialize(
    model: nn.Module, trainable: Sequence[nn.Parameter], optimizer: Any, config: Mapping[str, Any]
) -> tuple[Any, Any]:
    """`deepspeed.initialize` without start-up compilation: (engine, optimizer)."""
    import deepspeed

    no_jit_comm_ops()
    engine, opt, _, _ = deepspeed.initialize(
        model=model, model_parameters=list(trainable), optimizer=optimizer, config=dict(config)
    )
    return engine, opt


def set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def freeze(model: nn.Module, modules: Iterable[str]) -> list[str]:
    """Turn off gradients of every parameter under the named modules; returns their names."""
    prefixes = tuple(m + "." for m in modules) + tuple(modules)
    frozen = []
    for name, p in model.named_parameters():
        if name in modules or name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def state_digest(state: Mapping[str, torch.Tensor], only: Iterable[str] | None = None) -> str:
    """sha256 over names and float32 bytes of a state dict (or the names in `only`)."""
    keep = set(only) if only is not None else None
    h = hashlib.sha256()
    for name in sorted(state):
        if keep is not None and name not in keep:
            continue
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def fp32_copy(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of the named parameters, taken before DeepSpeed casts the module to
    bf16: frozen parameters have no fp32 master in the optimizer to export from."""
    keep = set(names)
    return {
        n: p.detach().to("cpu", torch.float32).clone()
        for n, p in model.named_parameters()
        if n in keep
    }


def consolidated_state(
    engine: Any, *, frozen: Mapping[str, torch.Tensor], all_ranks: bool = False
) -> dict[str, torch.Tensor] | None:
    """The full fp32 state dict on rank 0 (on every rank with `all_ranks`; None elsewhere).

    Trainable parameters come from the optimizer's fp32 masters
    (`deepspeed.utils.safe_get_full_fp32_param`), not from `engine.module`, whose weights
    DeepSpeed cast to bf16 in bf16 training: exporting those would round every weight and lose
    late low-LR updates. Frozen parameters come from `frozen` (fp32 copies taken before
    `deepspeed.initialize`), persistent buffers from the module (floating ones as fp32, in
    whichever dtype the engine holds them). Every rank must call this:
    gathering a master is a collective (an all-reduce under ZeRO-1/2, an all-gather under
    ZeRO-3), issued in the same parameter order on every rank."""
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    rank = dist.get_rank() if dist.is_initialized() else 0
    keep = all_ranks or rank == 0
    state: dict[str, torch.Tensor] = {}
    for name, p in engine.module.named_parameters():
        if name in frozen:
            value = frozen[name]
        elif p.requires_grad:
            value = safe_get_full_fp32_param(p)
            if value is None:  # a plain fp32 module without ZeRO partitioning
                value = p.detach()
        else:
            raise RuntimeError(f"parameter {name} is frozen but has no fp32 copy in `frozen`")
        if keep:
            state[name] = value.detach().to("cpu", torch.float32).clone()
    # on every rank: under ZeRO-3 the module's state_dict may gather, a collective
    module_state = engine.module.state_dict()
    if not keep:
        return None
    params = {name for name, _ in engine.module.named_parameters()}
    for name, b in module_state.items():  # persistent buffers only
        if name not in params:
            state[name] = b.detach().to("cpu", torch.float32 if b.is_floating_point() else None)
    return state
