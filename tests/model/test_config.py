"""The model config and the builders that turn it into plain arguments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dubforge.model.config import PRESET_NAMES, ModelConfig, diff_fields
from dubforge.model.flow import FlowOptions, Guidance
from dubforge.model.presets import PRESETS, build_model, flow_options, param_table, sampler_kwargs


def test_defaults_and_builders():
    cfg = ModelConfig()
    assert cfg.preset == "tiny" and cfg.space.name == "mel"
    d = cfg.dropout
    assert (d.full, d.no_video, d.no_video_labels, d.null, d.ref) == (0.8, 0.07, 0.07, 0.06, 0.3)
    opts = flow_options(cfg)
    assert opts.branch_probs == d.branch_probs and opts.drop_ref == d.ref
    assert opts.dur_weight == cfg.loss.dur_weight
    assert opts == FlowOptions() and sampler_kwargs(cfg)["cfg"] == Guidance()  # one home
    kw = sampler_kwargs(cfg)
    assert kw["nfe"] == 32 and kw["method"] == "euler" and kw["cfg"].text == 2.0
    off = ModelConfig.model_validate({"sampler": {"cfg": {"enabled": False}}})
    assert sampler_kwargs(off)["cfg"] is None
    model = build_model(cfg)
    assert model.latent_dim == 100 and model.video_ratio == 3.75 and model.flow == opts
    assert tuple(PRESETS) == PRESET_NAMES


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"preset": "huge"}, "preset"),
        ({"space": {"name": "codec"}}, "space.path"),
        ({"sampler": {"method": "midpoint", "nfe": 7}}, "even"),
        ({"sampler": {"sway": 3.0}}, "sway"),
        ({"dropout": {"null": -0.1, "full": 0.96}}, "null"),
        ({"dropout": {"no_video": 1.5}}, "no_video"),
        ({"dropout": {"full": 0.9}}, "sum to 1"),
        ({"dropout": {"ref": 1.2}}, "ref"),
        ({"dropout": {"video": 0.05, "ref": 0.3}}, "dropout.video.*dropout.full"),
        ({"sampler": {"cfg": {"null_drops_ref": False}}}, "null_drops_ref"),
        ({"tasks": ["tts", "sing"]}, "tasks"),
        ({"loss": {"span_frac": [0.9, 0.5]}}, "span_frac"),
        ({"nfe": 8}, "nfe"),  # sampler settings live under sampler:
    ],
)
def test_bad_configs_name_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        ModelConfig.model_validate(bad)


def test_nested_dropout_overrides_reach_the_objective():
    cfg = ModelConfig.model_validate(
        {"dropout": {"full": 0.5, "no_video": 0.2, "no_video_labels": 0.2, "null": 0.1, "ref": 0}}
    )
    opts = flow_options(cfg)
    assert opts.branch_probs == (0.5, 0.2, 0.2, 0.1) and opts.drop_ref == 0.0


def test_config_is_frozen_and_diffable():
    a = ModelConfig()
    with pytest.raises(ValidationError):
        a.preset = "base"  # type: ignore[misc]
    b = ModelConfig.model_validate({"preset": "small", "loss": {"dur_weight": 0.5}})
    assert diff_fields(a, b) == ["loss.dur_weight", "preset"] and diff_fields(a, a) == []


def test_param_table_lists_every_preset_and_component():
    table = param_table()
    for word in ("tiny", "small", "base", "dit.cross_attn", "lip_encoder", "total"):
        assert word in table
    names, totals = table.splitlines()[1].split()[1:], table.splitlines()[-1].split()[1:]
    total = {n: float(v) for n, v in zip(names, totals, strict=True)}
    assert total["tiny"] < 1.0 < total["small"] < total["base"]  # millions
    assert 300 < total["base"] < 600  # F5-TTS base is ~336 M; cross-attention adds ~92 M
