"""The DiT backbone: per-frame input embedding, AdaLN-zero blocks, velocity out.

Sequence layout. A batch holds s streams of n frames per sample ([b, s, n, c]); s = 2 when any
sample is `v2st` (stream 0 speech, stream 1 background), else 1. The streams are concatenated
along time into ONE sequence of s * n tokens, so speech and background attend to each other in
every layer (DualDub's joint soundtrack generation, done by attention instead of an aligner).
Both streams share RoPE positions (token i of either stream sits at frame i), so simultaneous
frames are at relative distance 0, and a learned stream embedding tells them apart. Padding
(short clips, or the absent second stream of single-stream samples) is masked out of every
attention; the conv position embedding runs per stream, so no frame sees the other stream
through it. A batch without padding (`Conditions.padded` False, decided at collate time) gets
no self-attention mask at all: PyTorch's flash kernel refuses any `attn_mask`.

Activation checkpointing (`activation_checkpointing`): each block's activations are recomputed
in the backward pass instead of stored, trading ~1/3 more compute for memory that no longer
grows with depth (the base preset at a 38400-frame budget needs ~50 GB of block activations).

Per-frame input (F5-TTS InputEmbedding): Linear([x_t, reference latents, text]) where text is
given to speech streams only; then + stream embedding + lip features (every stream), then the
conv position embedding. Global conditions (face, labels) arrive by cross-attention.

Shape key: b = batch, s = streams, n = frames, l = s * n tokens, c = latent width, d = model
width, e = text width, k = condition tokens.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from dubforge.model.conditions import Conditions
from dubforge.model.modules import (
    ConvPositionEmbedding,
    DiTBlock,
    FinalLayer,
    RotaryEmbedding,
    TimestepEmbedding,
)
from dubforge.schema import STREAMS  # stream id -> stem


class DiT(nn.Module):
    """Velocity network v(x_t, t, conditions) -> [b, s, n, c]."""

    def __init__(
        self,
        latent_dim: int,
        text_dim: int,
        dim: int,
        depth: int,
        heads: int,
        ff_mult: int,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        self.time = TimestepEmbedding(dim)
        self.inp = nn.Linear(2 * latent_dim + text_dim, dim)
        self.stream = nn.Embedding(len(STREAMS), dim)
        self.conv_pos = ConvPositionEmbedding(dim)
        self.rope = RotaryEmbedding(dim // heads)
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, ff_mult, dropout) for _ in range(depth)])
        self.final = FinalLayer(dim, latent_dim)

    def forward(self, x: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        """x: [b, s, n, c] noisy latents, t: [b] flow time -> velocity [b, s, n, c]."""
        b, s, n, _ = x.shape
        speech = (cond.stream_ids == 0)[:, :, None, None].to(x.dtype)  # speech: [b, s, 1, 1]
        text = cond.text[:, None].to(x.dtype) * speech  # text: [b, s, n, e]
        h = self.inp(torch.cat([x, cond.ref.to(x.dtype), text], dim=-1))  # h: [b, s, n, d]
        h = h + self.stream(cond.stream_ids)[:, :, None] + cond.aligned[:, None].to(x.dtype)
        mask = cond.frame_mask  # mask: [b, s, n]
        h = self.conv_pos(h.flatten(0, 1), mask.flatten(0, 1))  # h: [b*s, n, d]
        h = h.reshape(b, s * n, -1)  # h: [b, l, d]
        rope = self.rope(torch.arange(n, device=x.device).repeat(s))  # same frame, same angle
        c = self.time(t)  # c: [b, d]
        key_mask = mask.reshape(b, s * n) if cond.padded else None  # key_mask: [b, l]
        tokens = cond.tokens.to(h.dtype)
        args = (c, tokens, cond.token_mask, key_mask, rope)
        # no graph, nothing to save: inference never pays the recomputation
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                # non-reentrant: works with inputs that need no grad, keyword args and DeepSpeed
                h = torch.utils.checkpoint.checkpoint(block, h, *args, use_reentrant=False)
            else:
                h = block(h, *args)
        return self.final(h, c).view(b, s, n, -1)
