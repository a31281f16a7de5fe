"""DeepSpeed config from the typed config, the LR schedule, freezing and parameter digests."""

from __future__ import annotations

import pytest
import torch

from dubforge.model.presets import dit_tiny
from dubforge.train.config import DeepSpeedSection, Stage
from dubforge.train.engine import client_optimizer, ds_config, freeze, lr_at, state_digest
from dubforge.train.loop import stage_model_config
from tests.train.conftest import debug_dict

STAGE = Stage(
    name="s",
    tasks={"tts": 1},
    data=[{"shards": "x/*.tar"}],
    steps=100,
    lr=(1e-6, 1e-3),
    warmup_steps=10,
)


def test_lr_warms_up_then_cosine_decays_to_min():
    lrs = [lr_at(s, STAGE) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3)  # warm-up reaches max at its last step
    assert lrs[0] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 10)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[99] == pytest.approx(1e-6)
    assert lrs[10 + 45] == pytest.approx((1e-3 + 1e-6) / 2, rel=0.05)  # cosine midpoint


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_ds_config_per_zero_stage_on_cpu(zero):
    ds = DeepSpeedSection(zero_stage=zero, precision="fp32", grad_accum=4, grad_clip=0.5)
    cfg = ds_config(ds, micro_batch=8, world_size=2, use_gpu=False)
    assert cfg["zero_optimization"]["stage"] == zero
    assert cfg["train_batch_size"] == 8 * 4 * 2 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"] == {"enabled": False}
    if zero == 3:  # FACTS: DeepSpeed's AdamW in torch mode
        assert cfg["optimizer"]["params"]["torch_adam"] is True
        assert client_optimizer([], ds, cfg) is None
    else:  # a client torch AdamW
        assert cfg["zero_allow_untested_optimizer"] is True and "optimizer" not in cfg
        p = torch.nn.Parameter(torch.zeros(2))
        opt = client_optimizer([p], ds, cfg)
        assert isinstance(opt, torch.optim.AdamW)
        assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-9


def test_ds_config_offload_and_bf16():
    ds = DeepSpeedSection(zero_stage=2, precision="bf16", offload_optimizer=True, grad_clip=0)
    cfg = ds_config(ds, micro_batch=1, world_size=1, use_gpu=True)
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["bf16"] == {"enabled": True}
    assert "gradient_clipping" not in cfg


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_ds_config_on_gpu_uses_torchs_fused_adamw(zero):
    # DeepSpeed's FusedAdam would be JIT-built with nvcc, which pip's CUDA torch does not bring
    ds = DeepSpeedSection(zero_stage=zero, precision="bf16")
    cfg = ds_config(ds, micro_batch=8, world_size=8, use_gpu=True)
    opt = cfg["optimizer"]
    assert opt["type"] == "AdamW"
    assert opt["params"]["torch_adam"] is True and opt["params"]["fused"] is True
    assert opt["params"]["betas"] == [0.9, 0.98] and opt["params"]["eps"] == 1e-9
    assert "zero_allow_untested_optimizer" not in cfg
    assert client_optimizer([], ds, cfg) is None


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_gradients_are_reduced_in_fp32(precision):
    for use_gpu in (False, True):
        ds = DeepSpeedSection(zero_stage=2, precision=precision)
        cfg = ds_config(ds, micro_batch=8, world_size=2, use_gpu=use_gpu)
        assert cfg["communication_data_type"] == "fp32"


def test_freeze_and_digest():
    torch.manual_seed(0)
    model = dit_tiny()
    names = freeze(model, ["text_encoder", "dit.blocks"])
    assert names and all(n.startswith(("text_encoder.", "dit.blocks.")) for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in names)
    assert any(p.requires_grad for n, p in model.named_parameters() if n.startswith("dit.final"))
    state = model.state_dict()
    d = state_digest(state)
    assert d == state_digest({k: v.clone() for k, v in state.items()})
    state["dit.final.proj.bias"] = state["dit.final.proj.bias"] + 1e-6
    assert state_digest(state) != d
    assert state_digest(state, names) == state_digest(model.state_dict(), names)


def test_stage_overrides_reach_the_model_config():
    from dubforge.train.config import CurriculumConfig

    data = debug_dict(shards="/x")
    data["stages"][1]["dropout"] = {
        "full": 0.6,
        "no_video": 0.2,
        "no_video_labels": 0.1,
        "null": 0.1,
        "ref": 0.5,
    }
    data["stages"][1]["loss"] = {"dur_weight": 0.7}
    cfg = CurriculumConfig.model_validate(data)
    m = stage_model_config(cfg, cfg.stages[1])
    assert m.dropout.null == 0.1 and m.loss.dur_weight == 0.7
    assert stage_model_config(cfg, cfg.stages[0]) == cfg.model
