"""The GPU-bound paths of the model, checked on the CPU: no attention mask for unpadded
batches (so the flash kernel may run) and per-block activation checkpointing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from dubforge.model.batch import collate
from dubforge.model.config import ModelConfig
from dubforge.model.presets import build_model, dit_base, dit_small, dit_tiny
from dubforge.model.spaces import build_space
from tests.model.conftest import make_record


@pytest.fixture(scope="module")
def space():
    return build_space("mel")


def _batch(space, seconds: tuple[float, ...], task: str = "v2st"):
    records = [make_record(f"m/{i:05d}", s, seed=i) for i, s in enumerate(seconds)]
    return collate(records, space, tasks=task, seed=0)


def _noisy_tiny(**kwargs) -> torch.nn.Module:
    """A tiny model whose zero-initialised layers are filled, so outputs depend on attention."""
    torch.manual_seed(0)
    model = dit_tiny(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _self_attention_masks(monkeypatch, fn) -> list[object]:
    """Run fn, recording the attn_mask of every self-attention call (keys as long as queries)."""
    seen: list[object] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        if q.shape[-2] == k.shape[-2]:
            seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    fn()
    assert seen, "no self-attention call was seen"
    return seen


def test_collate_marks_padding(space):
    assert not _batch(space, (1.0, 1.0)).padded
    assert _batch(space, (1.0, 0.6)).padded  # the short clip is padded
    mixed = [make_record("m/00000", 1.0), make_record("m/00001", 1.0, bg=False, video=False)]
    # a tts sample has no background stream beside a v2st one: its second stream is padding
    assert collate(mixed, space, tasks=["v2st", "tts"], seed=0).padded


def test_unpadded_batch_attends_without_a_mask(space, monkeypatch):
    model = _noisy_tiny().eval()
    batch = _batch(space, (1.0, 1.0))
    conds, _ = model.encode_conditions(batch)
    x, t = torch.randn(batch.latents.shape), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        masks = _self_attention_masks(monkeypatch, lambda: model.velocity(x, t, conds))
        assert all(m is None for m in masks)
        masked = replace(conds, padded=True)
        assert all(
            m is not None
            for m in _self_attention_masks(monkeypatch, lambda: model.velocity(x, t, masked))
        )
        v_free, v_masked = model.velocity(x, t, conds), model.velocity(x, t, masked)
    assert v_free.abs().max() > 1e-3  # the comparison below is not of zeros
    torch.testing.assert_close(v_free, v_masked, rtol=1e-5, atol=1e-6)


def test_padded_batch_keeps_its_mask(space, monkeypatch):
    model = _noisy_tiny().eval()
    batch = _batch(space, (1.0, 0.6))
    with torch.no_grad():
        masks = _self_attention_masks(monkeypatch, lambda: model.sample(batch, nfe=1))
    assert all(m is not None for m in masks)


def test_guided_sampling_of_an_unpadded_batch_needs_no_mask(space, monkeypatch):
    from dubforge.model.flow import Guidance

    model = _noisy_tiny().eval()
    batch = _batch(space, (1.0, 1.0))
    masks = _self_attention_masks(
        monkeypatch, lambda: model.sample(batch, nfe=2, cfg=Guidance(video=2, labels=3, text=4))
    )
    assert all(m is None for m in masks)


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model.loss(batch, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_activation_checkpointing_keeps_loss_and_gradients(space, monkeypatch):
    plain = _noisy_tiny().train()
    ckpt = dit_tiny(activation_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    batch = _batch(space, (1.0, 0.6))
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    assert calls == []
    loss_b, grads_b = _loss_and_grads(ckpt, batch)
    assert calls == [False] * len(ckpt.dit.blocks)  # one non-reentrant checkpoint per block
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and any(".blocks." in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)
    calls.clear()
    with torch.no_grad():  # sampling builds no graph: nothing to recompute
        ckpt.eval().sample(batch, nfe=1)
    assert calls == []


def test_checkpointing_defaults_per_preset():
    with torch.device("meta"):
        assert not dit_tiny().dit.activation_checkpointing
        assert not dit_small().dit.activation_checkpointing
        assert dit_base().dit.activation_checkpointing
        assert not dit_base(activation_checkpointing=False).dit.activation_checkpointing


@pytest.mark.parametrize(("value", "expected"), [(None, False), (True, True), (False, False)])
def test_config_switch_reaches_the_model(space, value, expected):
    cfg = ModelConfig(preset="tiny", activation_checkpointing=value)
    assert build_model(cfg, space).dit.activation_checkpointing is expected
