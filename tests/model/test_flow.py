"""Flow matching: dropout rates, the OT path, eq. 9 guidance, packed branches, the sampler."""

from __future__ import annotations

import math

import pytest
import torch

from dubforge.model.batch import collate
from dubforge.model.conditions import Drop
from dubforge.model.flow import (
    FlowOptions,
    Guidance,
    cfg_branches,
    cfg_combine,
    integrate,
    masked_mse,
    ot_path,
    random_drop,
    sway_times,
    time_grid,
)
from dubforge.model.presets import dit_tiny
from dubforge.model.spaces import MelSpace
from tests.model.conftest import make_record

SPACE = MelSpace()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = dit_tiny()
    with torch.no_grad():  # leave AdaLN-zero's identity start so every condition matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_per_sample_dropout_rates_and_independence(p):
    n = 20000
    opts = FlowOptions(drop_video=p, drop_labels=p, drop_text=p, drop_ref=0.5)
    d = random_drop(n, opts, torch.Generator().manual_seed(0), torch.device("cpu"))
    tol = 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors
    for flags in (d.video, d.labels, d.text):
        assert flags.shape == (n,) and abs(flags.float().mean().item() - p) < tol
    assert abs(d.ref.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    both = (d.video & d.text).float().mean().item()  # independent draws: p * p
    assert abs(both - p * p) < 4 * math.sqrt(p * p * (1 - p * p) / n) + 1e-4


def test_ot_path_endpoints_and_target():
    x0, x1 = torch.randn(3, 4), torch.randn(3, 4)
    xt, u = ot_path(x0, x1, torch.tensor([0.0, 1.0, 0.25]), sigma=0.0)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], x1[1])
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * x1[2])
    torch.testing.assert_close(u, x1 - x0)
    xt, u = ot_path(x0, x1, torch.ones(3), sigma=0.1)
    torch.testing.assert_close(xt, 0.1 * x0 + x1)
    torch.testing.assert_close(u, x1 - 0.9 * x0)


def test_loss_counts_only_masked_frames():
    v, u = torch.zeros(1, 1, 4, 2), torch.tensor([[[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0], [0, 0]]]])
    mask = torch.tensor([[[True, True, False, False]]])
    assert masked_mse(v, u, mask).item() == pytest.approx((1 + 4) / 2)


def test_cfg_combination_is_eq9_for_a_toy_velocity():
    # toy velocity: each present condition adds its own field; eq. 9 must weight each by lambda
    x = torch.randn(5)
    fields = {"v": torch.randn(5), "c": torch.randn(5), "t": torch.randn(5)}

    def vel(video: bool, labels: bool, text: bool) -> torch.Tensor:
        return 0.5 * x + video * fields["v"] + labels * fields["c"] + text * fields["t"]

    g = Guidance(video=2.5, labels=0.5, text=3.0)
    out = cfg_combine(vel(1, 1, 1), vel(0, 1, 1), vel(0, 0, 1), vel(0, 0, 0), g)
    expected = 0.5 * x + 2.5 * fields["v"] + 0.5 * fields["c"] + 3.0 * fields["t"]
    torch.testing.assert_close(out, expected)
    # the literal eq. 9 on arbitrary branch outputs; all scales 1 -> the conditional velocity
    a, b, c, d = torch.randn(4, 7)
    lit = d + 2.5 * (a - b) + 0.5 * (b - c) + 3.0 * (c - d)
    torch.testing.assert_close(cfg_combine(a, b, c, d, g), lit)
    torch.testing.assert_close(cfg_combine(a, b, c, d, Guidance(1.0, 1.0, 1.0)), a)


def test_packed_branches_equal_four_separate_forwards(model):
    recs = [make_record("a/00000", 0.4), make_record("b/00000", 0.6, seed=1)]
    batch = collate(recs, SPACE, tasks=["v2s", "v2st"], train=False)
    conds, _ = model.encode_conditions(batch)
    g = Guidance(null_drops_ref=True)
    x = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        packed = model.velocity(x.repeat(4, 1, 1, 1), t.repeat(4), cfg_branches(conds, g))
        flags = [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 1)]
        separate = [
            model.velocity(x, t, conds.drop(Drop.constant(
                2, x.device, video=bool(v), labels=bool(c), text=bool(s), ref=bool(r))))
            for v, c, s, r in flags
        ]  # fmt: skip
    torch.testing.assert_close(packed, torch.cat(separate), rtol=1e-4, atol=1e-5)
    # and the branches really differ: each dropped condition changes the velocity
    for i in range(3):
        assert (separate[i] - separate[i + 1]).abs().max() > 1e-3


def test_sampler_is_seeded_keeps_the_reference_and_guides(model):
    meta, arrays = make_record("a/00000", 0.4)
    batch = collate([({**meta, "ref_frames": 10}, arrays)], SPACE, tasks="v2s", train=False)
    a = model.sample(batch, nfe=4, cfg=Guidance(), seed=7)
    b = model.sample(batch, nfe=4, cfg=Guidance(), seed=7)
    c = model.sample(batch, nfe=4, cfg=Guidance(), seed=8)
    plain = model.sample(batch, nfe=4, cfg=None, seed=7)
    assert a.shape == (1, 1, 40, 100) and torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3 and (a - plain).abs().max() > 1e-3
    torch.testing.assert_close(a[0, 0, :10], batch.latents[0, 0, :10])  # reference kept
    mid = model.sample(batch, nfe=4, method="midpoint", cfg=Guidance(), seed=7)
    assert mid.shape == a.shape and bool(torch.isfinite(mid).all())


def test_sampler_encodes_conditions_once_and_runs_one_4x_forward_per_step(model):
    batch = collate([make_record("a/00000", 0.4)], SPACE, tasks="v2s", train=False)
    calls: dict[str, list[int]] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda mod, args, out, name=name: calls.setdefault(name, []).append(len(args[0]))
        )
        for name in ("text_encoder", "lip_encoder", "face_encoder", "label_encoder", "dit")
    ]
    try:
        model.sample(batch, nfe=6, method="midpoint", cfg=Guidance(), seed=0)
    finally:
        for h in hooks:
            h.remove()
    assert calls["dit"] == [4] * 6  # nfe evaluations, each one forward of batch 4 x 1
    for name in ("lip_encoder", "face_encoder", "label_encoder"):
        assert calls[name] == [1], name
    assert calls["text_encoder"] == [2]  # one call: the text and its all-filler null together


def test_midpoint_beats_euler_at_equal_evaluations():
    # dx/dt = cos(t) x  ->  x(1) = x(0) exp(sin 1)
    x0 = torch.tensor([1.0, -2.0])
    exact = x0 * math.exp(math.sin(1.0))

    def vel(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(t) * x

    errs = {}
    for method in ("euler", "midpoint"):
        out = integrate(vel, x0, time_grid(16, method, sway=0.0), method)
        errs[method] = (out - exact).abs().max().item()
    assert errs["midpoint"] < errs["euler"] / 5 and errs["euler"] < 0.2


def test_sway_sampling_time_grid():
    uniform = sway_times(16, 0.0)
    torch.testing.assert_close(uniform, torch.linspace(0, 1, 17))
    for s in (-1.0, -0.5, 1.0):
        t = sway_times(16, s)
        assert t[0].item() == pytest.approx(0.0) and t[-1].item() == pytest.approx(1.0, abs=1e-6)
        assert bool((t[1:] > t[:-1]).all())  # strictly increasing
        assert bool((t[1:-1] < uniform[1:-1]).all()) == (s < 0)  # s < 0: denser near t = 0
    early = sway_times(16, -1.0)
    assert early[1] - early[0] < (early[-1] - early[-2]) / 10
    with pytest.raises(ValueError, match="sway coefficient"):
        sway_times(16, 2.0)
    assert len(time_grid(8, "midpoint", -1.0)) == 5 and len(time_grid(8, "euler", -1.0)) == 9
    with pytest.raises(ValueError, match="even"):
        time_grid(7, "midpoint", -1.0)
    with pytest.raises(ValueError, match="ODE method"):
        time_grid(8, "rk4", -1.0)  # type: ignore[arg-type]
