"""Building blocks: RoPE, timestep embedding, ConvNeXt-V2, AdaLN-zero DiT block, output layer.

Shape key: b = batch, l = tokens in the flattened sequence, n = frames, k = condition tokens,
d = model width, h = heads, e = head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of scalars x: [...] -> [..., dim] (Transformer / DDPM style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device) / half)
    args = x.float()[..., None] * freqs  # args: [..., half]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """Flow time t in [0, 1] -> [b, d]: sinusoidal features of 1000 t through an MLP (F5-TTS)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """t: [b] -> [b, d]."""
        return self.mlp(sinusoidal(t * 1000.0, self.freq_dim))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer) over the whole head width."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head width, got {head_dim}; change dim / heads")
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: [l] (frame index of each token) -> (cos, sin), each [l, e / 2]."""
        angles = positions.float()[:, None] * self.inv_freq  # angles: [l, e/2]
        return angles.cos(), angles.sin()


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate x: [b, h, l, e] by the angles of its positions (rotate-half convention)."""
    cos, sin = rope
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, zero_out: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        if zero_out:  # the block starts as the identity (AdaLN-zero spirit, DiT sec. 3.2)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: [b, l, d]; context: [b, k, d] or None; key_mask: [b, k or l] bool (True = attend)."""
        b, length, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, length, self.heads, -1).transpose(1, 2)  # q: [b, h, l, e]
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # mask: [b, 1, 1, k]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # y: [b, h, l, e]
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class FeedForward(nn.Module):
    """Linear -> GELU(tanh) -> Linear, width dim * mult."""

    def __init__(self, dim: int, mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., d] -> [..., d]."""
        return self.net(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN modulation: x: [b, l, d], shift/scale: [b, d]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """AdaLN-zero transformer block (DiT, Peebles & Xie 2023, sec. 3.2) with RoPE self-attention,
    cross-attention to global condition tokens (MM-MovieDubber sec. 2.3.2) and an FFN. The
    modulation and the cross-attention output start at zero, so a fresh block is the identity."""

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross = Attention(dim, heads, zero_out=True)
        self.norm_ff = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, ff_mult, dropout)
        self.drop = nn.Dropout(dropout)
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        tokens: Tensor,
        token_mask: Tensor,
        key_mask: Tensor | None,
        rope: tuple[Tensor, Tensor],
    ) -> Tensor:
        """x: [b, l, d]; c (time): [b, d]; tokens: [b, k, d]; masks: [b, k], [b, l] bool
        (key_mask None: no padded token, every token attends to every other)."""
        sh_a, sc_a, g_a, sh_f, sc_f, g_f = self.mod(F.silu(c)).chunk(6, dim=-1)  # each [b, d]
        a = self.attn(modulate(self.norm_attn(x), sh_a, sc_a), key_mask=key_mask, rope=rope)
        x = x + g_a[:, None] * self.drop(a)
        x = x + self.drop(self.cross(self.norm_cross(x), tokens, token_mask))
        x = x + g_f[:, None] * self.drop(self.ff(modulate(self.norm_ff(x), sh_f, sc_f)))
        return x


class FinalLayer(nn.Module):
    """AdaLN (shift, scale) then a zero-initialised projection to the output width."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mod = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out_dim)
        for layer in (self.mod, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x: [b, l, d], c: [b, d] -> [b, l, out]."""
        shift, scale = self.mod(F.silu(c)).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2, Woo et al. 2023) over time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: [b, n, d] with padded frames already zero."""
        gx = torch.norm(x, p=2, dim=1, keepdim=True)  # gx: [b, 1, d]
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv -> LayerNorm -> Linear -> GELU -> GRN -> Linear, residual (ConvNeXt-V2, as
    in F5-TTS's text encoder). Padded frames are zeroed before the conv and the GRN norm."""

    def __init__(self, dim: int, hidden: int, kernel: int = 7, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=pad, groups=dim, dilation=dilation)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.up = nn.Linear(dim, hidden)
        self.grn = GRN(hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [b, n, d]; mask: [b, n] bool or None."""
        m = 1.0 if mask is None else mask[..., None].to(x.dtype)
        y = self.dwconv((x * m).transpose(1, 2)).transpose(1, 2)  # y: [b, n, d]
        y = F.gelu(self.up(self.norm(y))) * m
        return x + self.down(self.grn(y))


class ConvPositionEmbedding(nn.Module):
    """Two grouped convolutions (kernel 31) + Mish, residual: relative position from local
    context (Voicebox / F5-TTS). Runs per stream, so streams do not bleed into each other."""

    def __init__(self, dim: int, kernel: int = 31, groups: int = 16) -> None:
        super().__init__()
        groups = math.gcd(dim, groups)
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.conv2 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: [b, n, d]; mask: [b, n] bool."""
        m = mask[:, None, :].to(x.dtype)  # m: [b, 1, n]
        y = x.transpose(1, 2) * m
        y = F.mish(self.conv1(y)) * m
        y = F.mish(self.conv2(y)) * m
        return x + y.transpose(1, 2)
