"""The dubber: condition encoders + DiT + duration head, with `loss` and `sample` entry points.

    model = build_model(cfg)                      # dubforge.model.presets
    batch = collate(records, space)               # dubforge.model.batch
    losses = model.loss(batch)                    # {"loss", "cfm", "dur"}
    latents = model.sample(batch, nfe=32, cfg=Guidance(), seed=0)

Shape key: b = batch, s = streams, n = latent frames, c = latent width, d = model width,
k = condition tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dubforge.model import flow
from dubforge.model.conditions import (
    LABEL_FIELDS,
    Conditions,
    FaceEncoder,
    LabelEncoder,
    LipEncoder,
    TextEncoder,
    upsample_frames,
)
from dubforge.model.dit import DiT
from dubforge.model.flow import FlowOptions, Guidance, Method

if TYPE_CHECKING:
    from dubforge.model.batch import Batch


class Dubber(nn.Module):
    """Flow-matching dubber over an acoustic latent space of width `latent_dim`; lip features
    at 25 fps reach the latent frame rate at `video_ratio` latent frames per video frame
    (repeated when it is an integer, interpolated otherwise: `upsample_frames`). Sizes are
    plain arguments (presets.py holds the named sizes); `flow` holds the objective's settings;
    `activation_checkpointing` recomputes each DiT block in the backward pass (DiT)."""

    def __init__(
        self,
        *,
        latent_dim: int,
        video_ratio: float,
        dim: int,
        depth: int,
        heads: int,
        ff_mult: int,
        text_dim: int,
        conv_layers: int,
        lip_channels: int,
        face_channels: int,
        face_res: int,
        face_tokens: int,
        temporal_layers: int,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
        flow: FlowOptions | None = None,
    ) -> None:
        super().__init__()
        if not video_ratio >= 1:
            raise ValueError(
                f"video_ratio must be >= 1 latent frame per video frame, got {video_ratio}: "
                "take it from the acoustic space (AcousticSpace.video_ratio)"
            )
        self.latent_dim = latent_dim
        self.video_ratio = float(video_ratio)
        self.flow = flow if flow is not None else FlowOptions()
        self.text_encoder = TextEncoder(text_dim, conv_layers)
        self.lip_encoder = LipEncoder(dim, lip_channels, temporal_layers)
        self.face_encoder = FaceEncoder(dim, face_channels, face_res, face_tokens, heads)
        self.label_encoder = LabelEncoder(dim)
        self.null_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.dur_head = nn.Linear(dim, 1)  # L_dur: speech activity per frame from lips
        self.dit = DiT(
            latent_dim,
            text_dim,
            dim,
            depth,
            heads,
            ff_mult,
            dropout,
            activation_checkpointing=activation_checkpointing,
        )
        self.face_slice = slice(1, 1 + face_tokens)
        self.label_slice = slice(1 + face_tokens, 1 + face_tokens + len(LABEL_FIELDS))

    def encode_conditions(self, batch: Batch) -> tuple[Conditions, Tensor | None]:
        """Run every condition encoder once: (conditions with nothing dropped, duration logits
        [b, n] from the lips or None when the batch has no lips)."""
        b, _, n, _ = batch.latents.shape
        dim = self.null_token.shape[-1]
        device = batch.latents.device
        valid = batch.frame_mask.any(dim=1)  # valid: [b, n]
        ids = torch.cat([batch.text, torch.zeros_like(batch.text)])  # real and all-filler text
        text, text_null = self.text_encoder(ids, valid.repeat(2, 1)).chunk(2)  # each [b, n, e]
        video = batch.has_video  # video: [b]
        aligned, dur = torch.zeros(b, n, dim, device=device), None
        if batch.lips is not None:
            lips = self.lip_encoder(batch.lips, batch.lip_mask)  # lips: [b, f, d]
            lip_frames = batch.lip_mask.sum(dim=1)  # lip_frames: [b]
            aligned = upsample_frames(lips, self.video_ratio, n, lip_frames)
            aligned = aligned * video[:, None, None]  # aligned: [b, n, d]
            dur = self.dur_head(aligned).squeeze(-1)  # dur: [b, n]
        k_face = self.face_slice.stop - self.face_slice.start
        face = torch.zeros(b, k_face, dim, device=device)
        has_face = torch.zeros(b, dtype=torch.bool, device=device)
        if batch.face is not None:
            face = self.face_encoder(batch.face, batch.face_mask)  # face: [b, k_f, d]
            has_face = batch.face_mask.any(dim=1) & video
        labels = self.label_encoder(batch.labels)  # labels: [b, 4, d]
        tokens = torch.cat([self.null_token.expand(b, -1, -1), face, labels], dim=1)
        token_mask = torch.cat(
            [
                torch.ones(b, 1, dtype=torch.bool, device=device),
                has_face[:, None].expand(b, k_face),
                torch.ones(b, labels.shape[1], dtype=torch.bool, device=device),
            ],
            dim=1,
        )  # token_mask: [b, k]
        keep = batch.frame_mask & ~batch.span  # reference frames
        conds = Conditions(
            ref=batch.latents * keep[..., None], text=text, text_null=text_null,
            aligned=aligned, tokens=tokens, token_mask=token_mask,
            frame_mask=batch.frame_mask, stream_ids=batch.stream_ids,
            face_slice=self.face_slice, label_slice=self.label_slice, padded=batch.padded,
        )  # fmt: skip
        return conds, dur

    def velocity(self, x: Tensor, t: Tensor, conds: Conditions) -> Tensor:
        """x: [b, s, n, c], t: [b] -> predicted velocity [b, s, n, c]."""
        return self.dit(x, t, conds)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The training losses (`loss`): what DeepSpeed's engine calls."""
        return self.loss(batch, generator)

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """CFM loss on the span + weighted duration loss, with nested per-sample condition
        dropout (flow.random_drop); returns {"loss" (differentiable), "cfm", "dur"}."""
        return flow.training_loss(self, batch, self.flow, generator)

    def sample(
        self,
        batch: Batch,
        *,
        nfe: int = 32,
        method: Method = "euler",
        sway: float = -1.0,
        cfg: Guidance | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Generate latents [b, s, n, c] (see flow.sample); cfg=None samples unguided; guided
        steps run only the eq. 9 branches the scales need (two when they are equal)."""
        return flow.sample(self, batch, nfe=nfe, method=method, sway=sway, cfg=cfg, seed=seed)
