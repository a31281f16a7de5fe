"""Named model sizes and the builders that turn a ModelConfig into plain arguments.

    python -m dubforge.model.presets        # parameter counts per preset and component

`base` follows F5-TTS base (dim 1024, depth 22, heads 16, ff mult 2, text dim 512, 4 ConvNeXt
text layers) and adds per-block cross-attention plus the lip / face / label encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dubforge.model.config import ModelConfig, SpaceSection
from dubforge.model.dubber import Dubber
from dubforge.model.flow import FlowOptions, Guidance
from dubforge.model.spaces import DEFAULT_MEL_PROFILE, AcousticSpace, build_space
from dubforge.schema import FPS, MEL_PROFILES, mel_profile

_DIMS: dict[str, dict[str, int]] = {
    "tiny": dict(
        dim=64,
        depth=2,
        heads=4,
        ff_mult=2,
        text_dim=32,
        conv_layers=1,
        lip_channels=4,
        face_channels=4,
        face_res=32,
        face_tokens=2,
        temporal_layers=1,
    ),
    "small": dict(
        dim=512,
        depth=12,
        heads=8,
        ff_mult=2,
        text_dim=256,
        conv_layers=4,
        lip_channels=32,
        face_channels=32,
        face_res=96,
        face_tokens=4,
        temporal_layers=2,
    ),
    "base": dict(
        dim=1024,
        depth=22,
        heads=16,
        ff_mult=2,
        text_dim=512,
        conv_layers=4,
        lip_channels=64,
        face_channels=64,
        face_res=112,
        face_tokens=8,
        temporal_layers=4,
    ),
}


# the presets' default space: the default mel profile (100 bins, 93.75 Hz = 3.75 per frame)
_MEL = mel_profile(DEFAULT_MEL_PROFILE)
LATENT_DIM, VIDEO_RATIO = _MEL.n_mels, _MEL.frame_rate / FPS


def dit_tiny(
    latent_dim: int = LATENT_DIM,
    video_ratio: float = VIDEO_RATIO,
    flow: FlowOptions | None = None,
    activation_checkpointing: bool = False,
) -> Dubber:
    """CPU-test size: dim 64, 2 layers (~0.3 M parameters in the mel space)."""
    return Dubber(
        latent_dim=latent_dim,
        video_ratio=video_ratio,
        flow=flow,
        activation_checkpointing=activation_checkpointing,
        **_DIMS["tiny"],
    )


def dit_small(
    latent_dim: int = LATENT_DIM,
    video_ratio: float = VIDEO_RATIO,
    flow: FlowOptions | None = None,
    activation_checkpointing: bool = False,
) -> Dubber:
    """dim 512, 12 layers, 8 heads: a single-GPU development size."""
    return Dubber(
        latent_dim=latent_dim,
        video_ratio=video_ratio,
        flow=flow,
        activation_checkpointing=activation_checkpointing,
        **_DIMS["small"],
    )


def dit_base(
    latent_dim: int = LATENT_DIM,
    video_ratio: float = VIDEO_RATIO,
    flow: FlowOptions | None = None,
    activation_checkpointing: bool = True,
) -> Dubber:
    """F5-TTS base size: dim 1024, 22 layers, 16 heads, ff mult 2, text dim 512. Activation
    checkpointing is on by default: at the curriculum's frame budget its block activations
    alone (~50 GB) would not fit beside the lip encoder's on one GPU."""
    return Dubber(
        latent_dim=latent_dim,
        video_ratio=video_ratio,
        flow=flow,
        activation_checkpointing=activation_checkpointing,
        **_DIMS["base"],
    )


PRESETS: dict[str, Callable[..., Dubber]] = {"tiny": dit_tiny, "small": dit_small, "base": dit_base}


def space_from_config(section: SpaceSection, device: str = "cpu") -> AcousticSpace:
    """The acoustic space a config names."""
    return build_space(
        section.name,
        section.path,
        mel_profile=section.mel_profile,
        vocoder=section.vocoder,
        codebooks=section.codebooks,
        latent_scale=section.latent_scale,
        griffin_lim_iters=section.griffin_lim_iters,
        device=device,
    )


def flow_options(cfg: ModelConfig) -> FlowOptions:
    """The objective's settings from a config."""
    d, loss = cfg.dropout, cfg.loss
    return FlowOptions(
        sigma=loss.sigma, branch_probs=d.branch_probs, drop_ref=d.ref, dur_weight=loss.dur_weight
    )


def sampler_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of `Dubber.sample` from a config (seed excluded)."""
    s, g = cfg.sampler, cfg.sampler.cfg
    guidance = Guidance(video=g.video, labels=g.labels, text=g.text) if g.enabled else None
    return {"nfe": s.nfe, "method": s.method, "sway": s.sway, "cfg": guidance}


def build_model(
    cfg: ModelConfig,
    space: AcousticSpace | None = None,
    *,
    latent_dim: int | None = None,
    video_ratio: float | None = None,
) -> Dubber:
    """The Dubber a config describes. Its latent width and video ratio (latent frames per
    video frame) come from `space`, from the explicit arguments (a checkpoint's codec.json),
    or from loading cfg.space. cfg.activation_checkpointing None keeps the preset's default
    (the builders above are its one home)."""
    if latent_dim is None or video_ratio is None:
        space = space if space is not None else space_from_config(cfg.space)
        latent_dim, video_ratio = space.latent_dim, space.video_ratio
    ckpt = cfg.activation_checkpointing
    extra = {} if ckpt is None else {"activation_checkpointing": ckpt}
    return PRESETS[cfg.preset](
        latent_dim=latent_dim, video_ratio=video_ratio, flow=flow_options(cfg), **extra
    )


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_counts(preset: str, latent_dim: int = LATENT_DIM) -> dict[str, int]:
    """Parameters per component of a preset (built on the meta device: no memory used); the
    video ratio adds no parameters."""
    with torch.device("meta"):
        model = PRESETS[preset](latent_dim=latent_dim)
    dit = model.dit
    blocks = list(dit.blocks)
    return {
        "text_encoder": _count(model.text_encoder),
        "lip_encoder": _count(model.lip_encoder),
        "face_encoder": _count(model.face_encoder),
        "label_encoder": _count(model.label_encoder),
        "dit.self_attn": sum(_count(b.attn) for b in blocks),
        "dit.cross_attn": sum(_count(b.cross) for b in blocks),
        "dit.ffn": sum(_count(b.ff) for b in blocks),
        "dit.adaln": sum(_count(b.mod) + _count(b.norm_cross) for b in blocks),
        "dit.in_out": _count(dit) - sum(_count(b) for b in blocks),
        "dur_head+null": _count(model.dur_head) + model.null_token.numel(),
        "total": _count(model),
    }


def param_table(latent_dim: int = LATENT_DIM) -> str:
    """A text table of parameter counts (millions) per preset and component."""
    counts = {name: param_counts(name, latent_dim) for name in PRESETS}
    rows = list(next(iter(counts.values())))
    head = f"{'component':<16}" + "".join(f"{n:>12}" for n in counts)
    lines = [f"parameters (M), latent width {latent_dim}", head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row:<16}" + "".join(f"{c[row] / 1e6:>12.3f}" for c in counts.values()))
    return "\n".join(lines)


def main() -> None:
    """Print the parameter table for each mel profile's width and EnCodec 24 kHz's (128)."""
    widths = sorted({p.n_mels for p in MEL_PROFILES.values()} | {128})
    print("\n\n".join(param_table(w) for w in widths))


if __name__ == "__main__":
    main()
