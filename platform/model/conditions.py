"""Condition encoders (text, lips, face, labels) and the `Conditions` bundle the DiT reads.

Conditions enter the DiT two ways (DESIGN.md "Model"): frame-aligned ones by concatenation /
addition per latent frame (reference latents, text, lips), global ones as cross-attention tokens
(face prosody tokens, label tokens; MM-MovieDubber sec. 2.3.2). Dropping a condition (training
dropout or a CFG branch) is `Conditions.drop`; the encoders never see a "dropped" flag, so the
encodings are computed once per batch and only masked per branch.

Shape key: b = batch, s = streams, n = latent frames, c = latent width, f = lip frames (25 fps),
g = face frames, k = condition tokens, d = model width, e = text width.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dubforge.model.modules import Attention, ConvNeXtV2Block, sinusoidal

TEXT_VOCAB = 257  # UTF-8 bytes + 1; id 0 is the filler that pads text to the latent length
LABEL_VOCAB: dict[str, tuple[str, ...]] = {
    "scene_type": ("unknown", "dialogue", "monologue", "narration"),
    "gender": ("unknown", "male", "female"),
    "age": ("unknown", "child", "teen", "adult", "elderly"),
    "emotion": (
        "unknown", "neutral", "calm", "excited", "sad", "happy", "angry", "fear", "surprise",
        "disgust",
    ),
}  # fmt: skip
LABEL_FIELDS = tuple(LABEL_VOCAB)


def text_ids(text: str) -> list[int]:
    """Characters as UTF-8 byte ids 1..256 (F5-TTS style, no phonemizer); 0 is the filler."""
    return [b + 1 for b in text.encode("utf-8")]


def label_ids(labels: dict[str, object] | None) -> list[int]:
    """Label values -> one index per field of LABEL_FIELDS; missing or unseen values -> 0,
    the "unknown" entry every table reserves."""
    labels = labels or {}
    out = []
    for field, vocab in LABEL_VOCAB.items():
        value = str(labels.get(field) or "unknown").lower()
        out.append(vocab.index(value) if value in vocab else 0)
    return out


def upsample_frames(feats: Tensor, ratio: float, n: int, lengths: Tensor | None = None) -> Tensor:
    """Video-rate features [b, f, d] -> latent rate [b, n, d], `ratio` latent frames per video
    frame (DESIGN.md "Contracts between stages").

    An integer ratio repeats each frame exactly (x3 EnCodec 75 Hz). Otherwise (x3.75 for the
    93.75 Hz vocos_24k mel, x3.45 for hifigan_22k) latent frame j reads the video features at
    its cell's centre, linearly interpolated: position u = (j + 0.5) / ratio - 0.5 in video
    frames, held at the first and last frame; at an integer ratio that centre lies inside the
    very frame repetition copies. A centred-STFT mel frame is centred on j / ratio instead:
    half a latent frame (~5 ms) off, well under one 40 ms video frame. Latent frames that
    start after the video ends get zeros (no video); the result is cut or zero-padded to n.
    `lengths` [b] = real video frames per sample, so a batch's padding frames are never
    interpolated into a shorter clip; None = all f are real.
    """
    b, f, _ = feats.shape
    if abs(ratio - round(ratio)) < 1e-9:
        up = feats.repeat_interleave(round(ratio), dim=1)  # up: [b, f * ratio, d]
        if up.shape[1] >= n:
            return up[:, :n]
        return F.pad(up, (0, 0, 0, n - up.shape[1]))
    if lengths is None:
        lengths = torch.full((b,), f, device=feats.device)
    last = (lengths.to(feats.device).long() - 1).clamp(min=0)[:, None]  # last: [b, 1]
    centre = (torch.arange(n, device=feats.device, dtype=torch.float64) + 0.5) / ratio
    u = (centre - 0.5).clamp(min=0)[None].expand(b, n)  # u: [b, n], in video frames
    i0 = torch.minimum(u.floor().long(), last)
    i1 = torch.minimum(i0 + 1, last)
    w = (u - i0).clamp(max=1).to(feats.dtype)[..., None]  # w: [b, n, 1]; 1 past the last

    def pick(idx: Tensor) -> Tensor:
        return feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1]))  # [b, n, d]

    up = pick(i0) * (1 - w) + pick(i1) * w
    start = torch.arange(n, device=feats.device) / ratio  # start: [n], in video frames
    inside = start[None] < lengths.to(feats.device)[:, None]  # starts before the video ends
    return up * inside[..., None].to(feats.dtype)


class TextEncoder(nn.Module):
    """Byte embeddings + sinusoidal positions -> ConvNeXt-V2 blocks (F5-TTS text encoder).
    Input ids are already padded with the filler to the latent length."""

    def __init__(self, text_dim: int, conv_layers: int, ff_mult: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(TEXT_VOCAB, text_dim)
        self.blocks = nn.ModuleList(
            [ConvNeXtV2Block(text_dim, text_dim * ff_mult) for _ in range(conv_layers)]
        )

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids: [b, n] long, mask: [b, n] bool (the clip's frames) -> [b, n, e]; frames past
        the clip are zeroed, so a clip encodes the same alone or padded in a batch."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + sinusoidal(pos, self.embed.embedding_dim)[None]  # x: [b, n, e]
        for block in self.blocks:
            x = block(x, mask)
        return x * mask[..., None]


def _conv_norm_act(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(1, c_out), nn.SiLU()
    )


class LipEncoder(nn.Module):
    """Mouth crops [b, f, 96, 96] uint8 at 25 fps -> [b, f, d]: a 3D-conv front end (5 frames x
    7 x 7, as in lip-reading front ends), a per-frame 2D conv stack pooled to a vector, then
    temporal ConvNeXt blocks. Normalisation is per frame, so padding never leaks into a clip."""

    def __init__(self, dim: int, channels: int, temporal_layers: int) -> None:
        super().__init__()
        c = channels
        self.front = nn.Conv3d(1, c, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3))
        self.front_norm = nn.GroupNorm(1, c)
        self.trunk = nn.Sequential(
            nn.MaxPool2d(3, stride=2, padding=1), _conv_norm_act(c, 2 * c),
            _conv_norm_act(2 * c, 4 * c),
        )  # fmt: skip
        self.proj = nn.Linear(4 * c, dim)
        self.temporal = nn.ModuleList(
            [ConvNeXtV2Block(dim, 2 * dim, kernel=5) for _ in range(temporal_layers)]
        )

    def forward(self, lips: Tensor, mask: Tensor) -> Tensor:
        """lips: [b, f, h, w] uint8, mask: [b, f] bool -> [b, f, d] (zero on padded frames)."""
        b, f, h, w = lips.shape
        m = mask.to(torch.float32)
        x = (lips.float() / 127.5 - 1.0) * m[..., None, None]  # padded frames = conv's zeros
        x = self.front(x[:, None])  # x: [b, c, f, h/2, w/2]
        x = x.transpose(1, 2).flatten(0, 1)  # x: [b*f, c, h/2, w/2]
        x = self.trunk(F.silu(self.front_norm(x)))  # x: [b*f, 4c, h/8, w/8]
        x = self.proj(x.mean(dim=(2, 3))).view(b, f, -1) * m[..., None]  # x: [b, f, d]
        for block in self.temporal:
            x = block(x, mask)
        return x * m[..., None]


class FaceEncoder(nn.Module):
    """Face crops [b, g, H, W, 3] uint8 -> `tokens` global prosody tokens [b, k, d]: a small
    CNN per frame (resized to `res`), then learned queries attend over the frames. After
    DiFlowDubber's FaPro (sec. 3.4.1) in spirit: the face sets the global prosody."""

    def __init__(self, dim: int, channels: int, res: int, tokens: int, heads: int) -> None:
        super().__init__()
        c = channels
        self.res = res
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=4), nn.GroupNorm(1, c), nn.SiLU(),
            _conv_norm_act(c, 2 * c), _conv_norm_act(2 * c, 4 * c),
        )  # fmt: skip
        self.proj = nn.Linear(4 * c, dim)
        self.queries = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.pool = Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, face: Tensor, mask: Tensor) -> Tensor:
        """face: [b, g, H, W, 3] uint8, mask: [b, g] bool -> [b, k, d]."""
        b, g = face.shape[:2]
        x = face.flatten(0, 1).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # x: [b*g, 3, H, W]
        if x.shape[-1] != self.res or x.shape[-2] != self.res:
            x = F.interpolate(x, size=(self.res, self.res), mode="area")
        x = self.proj(self.stem(x).mean(dim=(2, 3))).view(b, g, -1)  # x: [b, g, d]
        x = x + sinusoidal(torch.arange(g, device=x.device), x.shape[-1])[None]
        keys = mask | ~mask.any(dim=1, keepdim=True)  # a sample with no face attends to all
        q = self.queries[None].expand(b, -1, -1)  # q: [b, k, d]
        return self.norm(q + self.pool(q, x, keys))


class LabelEncoder(nn.Module):
    """Scene type, gender, age, emotion -> one token per field [b, 4, d]: an embedding per field
    (index 0 = "unknown") plus a field embedding, then one MLP over all fields together so each
    token carries the combination (MM-MovieDubber eq. 6, C_v = {C_s, C_g, C_a, C_e})."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(len(v), dim) for v in LABEL_VOCAB.values()])
        self.field = nn.Parameter(torch.randn(len(LABEL_VOCAB), dim) * 0.02)
        n = len(LABEL_VOCAB) * dim
        self.mix = nn.Sequential(nn.LayerNorm(n), nn.Linear(n, dim), nn.SiLU(), nn.Linear(dim, n))

    def forward(self, ids: Tensor) -> Tensor:
        """ids: [b, 4] long -> [b, 4, d]."""
        x = torch.stack([t(ids[:, i]) for i, t in enumerate(self.tables)], dim=1) + self.field
        return x + self.mix(x.flatten(1)).view_as(x)


@dataclass(frozen=True)
class Drop:
    """Which conditions are dropped (set to the null condition), per sample: each [b] bool."""

    video: Tensor
    labels: Tensor
    text: Tensor
    ref: Tensor

    @staticmethod
    def constant(
        b: int, device: torch.device, *, video: bool, labels: bool, text: bool, ref: bool
    ) -> Drop:
        """The same choice for every sample (a CFG branch)."""

        def full(v: bool) -> Tensor:
            return torch.full((b,), v, dtype=torch.bool, device=device)

        return Drop(full(video), full(labels), full(text), full(ref))


@dataclass(frozen=True)
class Conditions:
    """Encoded conditions for one DiT forward. `tokens` = [null | face | labels]; the null token
    is always attended, so a sample with every global condition dropped still has a key."""

    ref: Tensor  # [b, s, n, c] reference latents: the target outside the span, zero inside
    text: Tensor  # [b, n, e]
    text_null: Tensor  # [b, n, e] encoding of all-filler text (what a dropped text reads as)
    aligned: Tensor  # [b, n, d] lip features at the latent rate; zero = no video
    tokens: Tensor  # [b, k, d]
    token_mask: Tensor  # [b, k] bool
    frame_mask: Tensor  # [b, s, n] bool
    stream_ids: Tensor  # [b, s] long: 0 speech, 1 background
    face_slice: slice
    label_slice: slice
    padded: bool = True  # Batch.padded: False lets the DiT drop its key mask (flash attention)

    def drop(self, drop: Drop) -> Conditions:
        """Replace dropped conditions by their null versions (MM-MovieDubber: set to phi):
        video -> no lip features and no face tokens; labels -> no label tokens; text -> the
        all-filler encoding; ref -> zero reference latents."""
        mask = self.token_mask.clone()
        mask[:, self.face_slice] &= ~drop.video[:, None]
        mask[:, self.label_slice] &= ~drop.labels[:, None]
        return replace(
            self,
            ref=self.ref.masked_fill(drop.ref[:, None, None, None], 0.0),
            text=torch.where(drop.text[:, None, None], self.text_null, self.text),
            aligned=self.aligned.masked_fill(drop.video[:, None, None], 0.0),
            token_mask=mask,
        )

    @staticmethod
    def cat(parts: list[Conditions]) -> Conditions:
        """Stack condition sets along the batch (the packed CFG branches)."""

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts], dim=0)

        names = (
            "ref", "text", "text_null", "aligned", "tokens", "token_mask", "frame_mask",
            "stream_ids",
        )  # fmt: skip
        padded = any(p.padded for p in parts)
        return replace(parts[0], padded=padded, **{name: cat(name) for name in names})
