"""The dubber end to end on the tiny preset: shapes per task, masks, losses, gradients."""

from __future__ import annotations

import pytest
import torch

from dubforge.model.batch import collate
from dubforge.model.flow import FlowOptions
from dubforge.model.presets import dit_tiny
from dubforge.model.spaces import MelSpace
from tests.model.conftest import make_record

SPACE = MelSpace()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = dit_tiny(flow=FlowOptions(branch_probs=(1.0, 0.0, 0.0, 0.0), drop_ref=0.0))
    # AdaLN-zero starts every block as the identity; perturb so masks and conditions matter
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize("task", ["tts", "v2a", "v2s", "v2st"])
def test_each_task_gives_velocity_and_losses_of_the_right_shape(model, task):
    recs = [make_record("a/00000", 0.6), make_record("b/00000", 0.4, seed=1)]
    batch = collate(recs, SPACE, tasks=task, seed=0)
    s = 2 if task == "v2st" else 1
    n = round(0.6 * SPACE.frame_rate)
    assert batch.latents.shape == (2, s, n, 100)
    conds, dur = model.encode_conditions(batch)
    assert (dur is None) == (task == "tts")
    v = model.velocity(batch.latents, torch.full((2,), 0.5), conds)
    assert v.shape == (2, s, n, 100) and bool(torch.isfinite(v).all())
    losses = model.loss(batch, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "cfm", "dur"} and bool(torch.isfinite(losses["loss"]))
    assert (float(losses["dur"]) > 0) == (task in ("v2s", "v2st"))


def test_audio_only_tts_trains_and_reaches_every_used_encoder(model):
    recs = [make_record(f"s/{i:05d}", 0.5, video=False, bg=False, seed=i) for i in range(2)]
    batch = collate(recs, SPACE, seed=0)
    assert batch.tasks == ("tts", "tts") and batch.lips is None
    m = dit_tiny()
    m.loss(batch, torch.Generator().manual_seed(0))["loss"].backward()
    assert m.dit.final.proj.weight.grad.abs().sum() > 0  # zero-init output layer gets gradient
    assert m.lip_encoder.proj.weight.grad is None  # no lips: the lip encoder is not used


def test_a_sample_is_unaffected_by_its_batch_neighbours(model):
    """Masks: padding frames, a missing second stream and other samples change nothing."""
    rec = make_record("a/00000", 0.4)
    alone = collate([rec], SPACE, tasks="v2s", train=False)
    mixed = collate([rec, make_record("b/00000", 0.8, seed=2)], SPACE, tasks=["v2s", "v2st"],
                    train=False)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = torch.randn(mixed.latents.shape, generator=g)
    t = torch.tensor([0.3, 0.3])
    with torch.no_grad():
        v_mixed = model.velocity(x, t, model.encode_conditions(mixed)[0])
        n = alone.latents.shape[2]
        v_alone = model.velocity(x[:1, :1, :n], t[:1], model.encode_conditions(alone)[0])
    torch.testing.assert_close(v_mixed[0, 0, :n], v_alone[0, 0], rtol=1e-4, atol=1e-4)


def test_v2st_streams_attend_to_each_other(model):
    batch = collate([make_record("a/00000", 0.4)], SPACE, tasks="v2st", train=False)
    conds, _ = model.encode_conditions(batch)
    x = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(0))
    x2 = x.clone()
    x2[:, 1] += 1.0  # change only the background stream
    with torch.no_grad():
        v, v2 = (model.velocity(z, torch.tensor([0.5]), conds) for z in (x, x2))
    assert (v2[:, 0] - v[:, 0]).abs().max() > 1e-3  # speech saw the background
