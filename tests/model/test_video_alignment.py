"""Lips reach the latent rate: exact repetition at integer ratios, interpolation otherwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dubforge.model.batch import collate
from dubforge.model.conditions import upsample_frames
from dubforge.model.presets import dit_tiny
from dubforge.model.spaces import MelSpace
from tests.model.conftest import make_record


def _repeat_then_fit(feats: torch.Tensor, repeat: int, n: int) -> torch.Tensor:
    """The repetition rule lips followed before non-integer ratios existed."""
    up = feats.repeat_interleave(repeat, dim=1)
    return up[:, :n] if up.shape[1] >= n else F.pad(up, (0, 0, 0, n - up.shape[1]))


def test_integer_ratio_is_exact_repetition():
    torch.manual_seed(0)
    feats = torch.randn(2, 10, 5)
    for ratio in (3, 3.0, 4.0):
        r = round(ratio)
        for n in (10 * r, 10 * r + 7, 10 * r - 4):
            old = _repeat_then_fit(feats, r, n)
            assert torch.equal(upsample_frames(feats, ratio, n), old)
            assert torch.equal(upsample_frames(feats, ratio, n, torch.tensor([10, 6])), old)


@pytest.mark.parametrize("ratio", [3.75, 22050 / 256 / 25])
def test_non_integer_ratio_interpolates_at_latent_frame_centres(ratio):
    f, n = 8, 40
    feats = torch.arange(f, dtype=torch.float32).view(1, f, 1).expand(2, f, 3)  # frame i = i
    up = upsample_frames(feats, ratio, n)
    assert up.shape == (2, n, 3)
    centre = (torch.arange(n, dtype=torch.float64) + 0.5) / ratio  # in video frames
    inside = torch.arange(n) / ratio < f  # latent frames that start before the video ends
    # a linear ramp interpolates to itself: latent frame j shows position (j + 0.5) / r - 0.5,
    # held at the first and last video frame, and nothing after the video
    expect = torch.where(
        inside, (centre - 0.5).clamp(0, f - 1), torch.zeros(n, dtype=torch.float64)
    )
    torch.testing.assert_close(up[0, :, 0].double(), expect, rtol=0, atol=1e-6)
    assert int(inside.sum()) == math.ceil(f * ratio) and bool((up[0, ~inside] == 0).all())
    # between two frames the value is a blend, not a copy of either
    assert 0 < float(up[0, 5, 0]) % 1 < 1
    cut = upsample_frames(feats, ratio, 11)
    assert torch.equal(cut, up[:, :11])


def test_padding_frames_never_leak_into_a_shorter_clip():
    torch.manual_seed(0)
    short, long = torch.randn(1, 5, 4), torch.randn(1, 9, 4)
    padded = torch.cat([F.pad(short, (0, 0, 0, 4)), long])  # batch: [2, 9, 4], zero padding
    batch = upsample_frames(padded, 3.75, 34, torch.tensor([5, 9]))
    alone = upsample_frames(short, 3.75, 34)
    assert torch.equal(batch[0], alone[0])
    assert torch.equal(batch[1], upsample_frames(long, 3.75, 34)[0])
    assert bool((alone[0, 19:] == 0).all()) and bool((alone[0, 18] != 0).all())  # 5 * 3.75


def test_dubber_aligns_lips_at_the_space_ratio():
    space = MelSpace()  # vocos_24k: 3.75 latent frames per video frame
    torch.manual_seed(0)
    model = dit_tiny(space.latent_dim, space.video_ratio).eval()
    assert model.video_ratio == 3.75
    recs = [make_record("a/00000", 0.4, face=False), make_record("b/00000", 0.8, face=False)]
    pair = collate(recs, space, tasks="v2s", train=False)
    alone = collate(recs[:1], space, tasks="v2s", train=False)
    with torch.no_grad():
        both, _ = model.encode_conditions(pair)
        one, _ = model.encode_conditions(alone)
    n = alone.latents.shape[2]
    assert both.aligned.shape[:2] == (2, pair.latents.shape[2])
    torch.testing.assert_close(both.aligned[0, :n], one.aligned[0], rtol=1e-4, atol=1e-5)
    assert one.aligned.shape[1] == 38  # 0.4 s of vocos_24k mel
    assert bool((one.aligned[0].abs().sum(-1) > 0).all())  # 10 lip frames reach all 38
    with pytest.raises(ValueError, match="video_ratio must be >= 1"):
        dit_tiny(100, 0.5)
