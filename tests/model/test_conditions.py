"""Condition encoders: lip upsampling alignment, padding invariance, labels, dropping."""

from __future__ import annotations

import torch

from dubforge.model.conditions import Conditions, Drop, LipEncoder, label_ids, upsample_frames


def test_lip_upsampling_repeats_each_video_frame():
    feats = torch.arange(10, dtype=torch.float32).view(1, 10, 1).expand(2, 10, 3)  # frame i = i
    for r in (3, 4):
        up = upsample_frames(feats, r, 10 * r)
        assert up.shape == (2, 10 * r, 3)
        # latent frame j shows video frame j // r: 75 Hz codec x3, 100 Hz mel x4
        assert up[0, :, 0].tolist() == [float(j // r) for j in range(10 * r)]
    assert upsample_frames(feats, 4, 37)[0, :, 0].tolist() == [float(j // 4) for j in range(37)]
    padded = upsample_frames(feats, 3, 35)
    assert padded[0, 30:].abs().sum() == 0 and padded[0, 29, 0] == 9


def test_lip_features_ignore_padding():
    torch.manual_seed(0)
    enc = LipEncoder(dim=16, channels=4, temporal_layers=1).eval()
    lips = torch.randint(0, 256, (1, 12, 96, 96), dtype=torch.uint8)
    alone = enc(lips, torch.ones(1, 12, dtype=torch.bool))
    padded = torch.cat([lips, torch.randint(0, 256, (1, 8, 96, 96), dtype=torch.uint8)], dim=1)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[:, :12] = True
    out = enc(padded, mask)
    torch.testing.assert_close(out[:, :12], alone, rtol=1e-4, atol=1e-5)
    assert out[:, 12:].abs().sum() == 0


def test_label_ids_map_unknown_and_missing_to_zero():
    assert label_ids(None) == [0, 0, 0, 0]
    assert label_ids({"scene_type": "Narration", "gender": "robot", "age": "child"}) == [3, 0, 1, 0]


def _conds(b: int = 2) -> Conditions:
    g = torch.Generator().manual_seed(0)
    return Conditions(
        ref=torch.randn(b, 1, 5, 3, generator=g), text=torch.randn(b, 5, 4, generator=g),
        text_null=torch.zeros(b, 5, 4), aligned=torch.randn(b, 5, 8, generator=g),
        tokens=torch.randn(b, 7, 8, generator=g), token_mask=torch.ones(b, 7, dtype=torch.bool),
        frame_mask=torch.ones(b, 1, 5, dtype=torch.bool),
        stream_ids=torch.zeros(b, 1, dtype=torch.long), face_slice=slice(1, 3),
        label_slice=slice(3, 7),
    )  # fmt: skip


def test_drop_nulls_only_the_dropped_conditions_of_the_dropped_samples():
    c = _conds()
    t, f = torch.tensor([True, False]), torch.tensor([False, False])
    d = c.drop(Drop(video=t, labels=f, text=f, ref=f))
    assert d.aligned[0].abs().sum() == 0 and torch.equal(d.aligned[1], c.aligned[1])
    assert d.token_mask[0].tolist() == [True, False, False, True, True, True, True]
    assert bool(d.token_mask[1].all()) and torch.equal(d.text, c.text) and torch.equal(d.ref, c.ref)
    d = c.drop(Drop(video=f, labels=t, text=t, ref=t))
    assert d.token_mask[0].tolist() == [True, True, True, False, False, False, False]
    assert d.text[0].abs().sum() == 0 and torch.equal(d.text[1], c.text[1])
    assert d.ref[0].abs().sum() == 0 and torch.equal(d.ref[1], c.ref[1])
    both = Conditions.cat([c, d])
    assert both.ref.shape[0] == 4 and torch.equal(both.token_mask[2:], d.token_mask)
