"""Flow matching: nested dropout, the OT path, eq. 9 guidance, packed branches, the sampler."""

from __future__ import annotations

import math

import pytest
import torch

from dubforge.model import flow
from dubforge.model.batch import collate
from dubforge.model.conditions import Drop
from dubforge.model.config import ModelConfig
from dubforge.model.flow import (
    BRANCHES,
    FULL,
    NULL,
    FlowOptions,
    Guidance,
    cfg_branches,
    cfg_terms,
    cfg_weights,
    guided_velocity,
    integrate,
    masked_mse,
    ot_path,
    random_drop,
    sway_times,
    time_grid,
)
from dubforge.model.presets import dit_tiny, flow_options
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


def _branch_of(d: Drop) -> torch.Tensor:
    """Index into BRANCHES of each sample's (video, labels, text) drop pattern; -1 if none."""
    pattern = torch.stack([d.video, d.labels, d.text], dim=1)  # pattern: [b, 3]
    table = torch.tensor([flags[:3] for flags in BRANCHES])  # table: [4, 3]
    hit = (pattern[:, None] == table[None]).all(dim=-1)  # hit: [b, 4]
    return torch.where(hit.any(dim=1), hit.float().argmax(dim=1), -1)


def test_nested_dropout_trains_every_eq9_branch_at_its_configured_rate():
    opts = flow_options(ModelConfig())  # the configured defaults
    n = 200_000
    d = random_drop(n, opts, torch.Generator().manual_seed(0), torch.device("cpu"))
    branch = _branch_of(d)
    assert bool((branch >= 0).all())  # only eq. 9's four patterns are ever drawn
    for i, p in enumerate(opts.branch_probs):
        freq = (branch == i).float().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (i, freq, p)
    # the all-null branch eq. 9 subtracts is trained at its rate (independent 5 % drops: 1e-4)
    null = branch == NULL
    assert opts.branch_probs[NULL] >= 0.05 and abs(null.float().mean().item() - 0.06) < 0.003
    # the null draw drops the reference, as the sampler's null branch does; the others drop it
    # independently of the branch at drop_ref
    assert bool(d.ref[null].all()) and BRANCHES[NULL][3]
    for i in range(NULL):
        rate, m = d.ref[branch == i].float().mean().item(), int((branch == i).sum())
        q = opts.drop_ref
        assert abs(rate - q) < 5 * math.sqrt(q * (1 - q) / m), (i, rate)


def test_nested_dropout_never_draws_a_zero_probability_branch():
    opts = FlowOptions(branch_probs=(0.5, 0.0, 0.25, 0.25), drop_ref=0.0)
    d = random_drop(50_000, opts, torch.Generator().manual_seed(1), torch.device("cpu"))
    counts = torch.bincount(_branch_of(d), minlength=4).tolist()
    assert counts[1] == 0 and min(counts[0], counts[2], counts[3]) > 10_000
    assert torch.equal(d.ref, _branch_of(d) == NULL)  # drop_ref 0: only the null draw drops it
    keep_all = FlowOptions(branch_probs=(1.0, 0.0, 0.0, 0.0), drop_ref=0.0)
    nothing = random_drop(100, keep_all, None, torch.device("cpu"))
    assert not any(bool(f.any()) for f in (nothing.video, nothing.labels, nothing.text))


@pytest.mark.parametrize(
    "probs", [(0.5, 0.5, 0.5, 0.0), (0.9, 0.05, 0.0501, -0.0001), (0.8, 0.1, 0.1)]
)
def test_flow_options_reject_branch_probabilities_that_are_not_a_distribution(probs):
    with pytest.raises(ValueError, match="branch_probs"):
        FlowOptions(branch_probs=probs)


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


def _eq9(v_full, v_no_v, v_no_vc, v_null, g: Guidance):
    """MM-MovieDubber eq. 9 as printed."""
    return (
        v_null
        + g.video * (v_full - v_no_v)
        + g.labels * (v_no_v - v_no_vc)
        + g.text * (v_no_vc - v_null)
    )


def test_cfg_weights_are_eq9_for_a_toy_velocity():
    # toy velocity: each present condition adds its own field; eq. 9 must weight each by lambda
    x = torch.randn(5)
    fields = {"v": torch.randn(5), "c": torch.randn(5), "t": torch.randn(5)}

    def vel(video: bool, labels: bool, text: bool) -> torch.Tensor:
        return 0.5 * x + video * fields["v"] + labels * fields["c"] + text * fields["t"]

    g = Guidance(video=2.5, labels=0.5, text=3.0)
    branches = [vel(not v, not c, not t) for v, c, t, _ in BRANCHES]
    out = sum(w * b for w, b in zip(cfg_weights(g), branches, strict=True))
    expected = 0.5 * x + 2.5 * fields["v"] + 0.5 * fields["c"] + 3.0 * fields["t"]
    torch.testing.assert_close(out, expected)
    # the literal eq. 9 on arbitrary branch outputs; all scales 1 -> the conditional velocity
    vs = torch.randn(4, 7)
    for h in (g, Guidance(1.0, 1.0, 1.0), Guidance(2.0, 2.0, 2.0), Guidance(-1.0, 0.0, 4.0)):
        weighted = sum(w * v for w, v in zip(cfg_weights(h), vs, strict=True))
        torch.testing.assert_close(weighted, _eq9(*vs, h))


def test_cfg_terms_keep_only_the_branches_eq9_needs():
    assert cfg_terms(None) == ((FULL, 1.0),)
    assert cfg_terms(Guidance(2.0, 2.0, 2.0)) == ((FULL, 2.0), (NULL, -1.0))  # exact reduction
    assert cfg_terms(Guidance(0.0, 0.0, 0.0)) == ((NULL, 1.0),)
    assert cfg_terms(Guidance(1.0, 1.0, 1.0)) == ((FULL, 1.0),)
    assert [i for i, _ in cfg_terms(Guidance(2.5, 1.5, 3.0))] == [0, 1, 2, 3]
    assert [i for i, _ in cfg_terms(Guidance(2.0, 2.0, 3.0))] == [0, 2, 3]


def _mixed_batch():
    recs = [make_record("a/00000", 0.4), make_record("b/00000", 0.6, seed=1)]
    metas = [({**m, "ref_frames": 10}, a) for m, a in recs]
    return collate(metas, SPACE, tasks=["v2s", "v2st"], train=False)


def test_packed_branches_equal_separate_forwards(model):
    batch = _mixed_batch()
    conds, _ = model.encode_conditions(batch)
    x = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        packed = model.velocity(x.repeat(4, 1, 1, 1), t.repeat(4), cfg_branches(conds, range(4)))
        flags = [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 1)]  # null: no reference
        drops = [
            Drop.constant(2, x.device, video=bool(v), labels=bool(c), text=bool(s), ref=bool(r))
            for v, c, s, r in flags
        ]
        separate = [model.velocity(x, t, conds.drop(d)) for d in drops]
        pair = model.velocity(x.repeat(2, 1, 1, 1), t.repeat(2), cfg_branches(conds, [FULL, NULL]))
    torch.testing.assert_close(packed, torch.cat(separate), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pair, torch.cat([separate[0], separate[3]]), rtol=1e-4, atol=1e-5)
    # and the branches really differ: each dropped condition changes the velocity
    for i in range(3):
        assert (separate[i] - separate[i + 1]).abs().max() > 1e-3


def _four_branch_velocity(model, conds, cfg):
    """The eq. 9 velocity from all four branches in one packed forward, whatever the scales."""
    packed = cfg_branches(conds, range(4))

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model.velocity(x.repeat(4, 1, 1, 1), t.expand(4 * x.shape[0]), packed)
        return _eq9(*v.chunk(4, dim=0), cfg)

    return velocity


@pytest.mark.parametrize("scale", [2.0, 0.0, 1.0, -0.5])
def test_equal_scales_two_branches_give_the_four_branch_result(model, monkeypatch, scale):
    batch, g = _mixed_batch(), Guidance(scale, scale, scale)
    conds, _ = model.encode_conditions(batch)
    x = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reduced = guided_velocity(model, conds, g)(x, torch.tensor(0.3))
        full = _four_branch_velocity(model, conds, g)(x, torch.tensor(0.3))
    torch.testing.assert_close(reduced, full, rtol=1e-4, atol=1e-5)
    rows: list[int] = []
    hook = model.dit.register_forward_hook(lambda mod, args, out: rows.append(len(args[0])))
    try:
        two = model.sample(batch, nfe=4, cfg=g, seed=5)
        monkeypatch.setattr(flow, "guided_velocity", _four_branch_velocity)
        four = model.sample(batch, nfe=4, cfg=g, seed=5)
    finally:
        hook.remove()
    k = 1 if scale in (0.0, 1.0) else 2  # eq. 9 with equal scales: full and/or null branch
    assert rows == [k * 2] * 4 + [4 * 2] * 4
    torch.testing.assert_close(two, four, rtol=1e-4, atol=1e-4)
    other = model.sample(batch, nfe=4, cfg=Guidance(scale, scale, scale + 1.0), seed=5)
    assert (two - other).abs().max() > 1e-3  # the comparison is not vacuous: scales matter


@pytest.mark.parametrize(
    "cfg, branches",
    [
        (Guidance(2.0, 2.0, 2.0), 2),  # equal scales: full and null only
        (Guidance(2.5, 1.5, 3.0), 4),  # distinct scales: every branch of eq. 9
        (Guidance(0.0, 0.0, 0.0), 1),  # all zero: the null branch alone
        (None, 1),  # unguided: the full branch alone
    ],
)
def test_sampler_runs_one_forward_of_the_needed_branches_per_step(model, cfg, branches):
    batch = _mixed_batch()
    rows: list[int] = []
    hook = model.dit.register_forward_hook(lambda mod, args, out: rows.append(len(args[0])))
    try:
        model.sample(batch, nfe=3, cfg=cfg, seed=0)
    finally:
        hook.remove()
    assert rows == [branches * 2] * 3  # nfe forwards, each of batch branches x 2


def test_unit_scales_sample_the_conditional_velocity(model):
    batch = _mixed_batch()
    plain = model.sample(batch, nfe=3, cfg=None, seed=2)
    assert torch.equal(model.sample(batch, nfe=3, cfg=Guidance(1.0, 1.0, 1.0), seed=2), plain)


def test_sampler_is_seeded_keeps_the_reference_and_guides(model):
    meta, arrays = make_record("a/00000", 0.4)
    batch = collate([({**meta, "ref_frames": 10}, arrays)], SPACE, tasks="v2s", train=False)
    a = model.sample(batch, nfe=4, cfg=Guidance(), seed=7)
    b = model.sample(batch, nfe=4, cfg=Guidance(), seed=7)
    c = model.sample(batch, nfe=4, cfg=Guidance(), seed=8)
    plain = model.sample(batch, nfe=4, cfg=None, seed=7)
    assert a.shape == (1, 1, round(0.4 * 93.75), 100) and torch.equal(a, b)
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
        model.sample(batch, nfe=6, method="midpoint", cfg=Guidance(2.5, 1.5, 3.0), seed=0)
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
