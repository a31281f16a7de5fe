"""DeepSpeed from the typed config: the ZeRO config dict, the optimizer choice, the LR schedule,
frozen modules, parameter digests and the consolidated export.

Optimizers (measured on CPU + gloo, FACTS.md): ZeRO-1/2 take a client `torch.optim.AdamW`
(`zero_allow_untested_optimizer`); ZeRO-3 gets DeepSpeed's AdamW with `torch_adam: true`;
optimizer offload uses DeepSpeed's CPUAdam (JIT-compiled once into TORCH_EXTENSIONS_DIR). On GPU
every stage uses DeepSpeed's fused AdamW.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
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
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.grad_clip > 0:
        cfg["gradient_clipping"] = ds.grad_clip
    params = {"lr": 1e-4, "betas": list(ds.betas), "eps": ds.eps, "weight_decay": ds.weight_decay}
    if ds.offload_optimizer:
        cfg["optimizer"] = {"type": "AdamW", "params": params}
    elif use_gpu:
        cfg["optimizer"] = {"type": "AdamW", "params": params}
    elif ds.zero_stage == 3:
        cfg["optimizer"] = {"type": "AdamW", "params": {**params, "torch_adam": True}}
    else:
        cfg["zero_allow_untested_optimizer"] = True
    return cfg


def client_optimizer(
    params: Iterable[nn.Parameter], ds: DeepSpeedSection, config: Mapping[str, Any]
) -> torch.optim.Optimizer | None:
    """The torch optimizer to hand to deepspeed.initialize, or None when the config names one."""
    if "optimizer" in config:
        return None
    return torch.optim.AdamW(
        list(params), lr=1e-4, betas=ds.betas, eps=ds.eps, weight_decay=ds.weight_decay
    )


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


def consolidated_state(engine: Any, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """The full fp32 state dict on rank 0 (None elsewhere). ZeRO-3 gathers the partitioned
    parameters; every rank must call this."""
    import deepspeed
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    module = engine.module
    if zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = _copy(module) if rank == 0 else None
    else:
        state = _copy(module) if rank == 0 else None
    return state


def _copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}
