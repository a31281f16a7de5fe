"""Inference export: one folder per checkpoint (DESIGN.md "Contracts between stages").

    <dir>/model.safetensors   consolidated weights (model.pt via torch.save without safetensors)
    <dir>/config.json         the resolved ModelConfig
    <dir>/codec.json          the acoustic space reference: space, sample / frame rate, latent
                              width, video_ratio (latent frames per 25 fps video frame);
                              mel: mel_profile, vocoder {kind, path} or null (Griffin-Lim);
                              codec: path, codec name, codebooks, latent scale
    <dir>/metadata.json       stage, step, metrics, created (UTC), dubforge version

`load_checkpoint` rebuilds the model from these alone (the codec itself is only needed to turn
latents into audio: `load_space`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from dubforge.model.config import ModelConfig, diff_fields
from dubforge.model.dubber import Dubber
from dubforge.model.presets import build_model
from dubforge.model.spaces import AcousticSpace, build_space
from dubforge.model.vocoders import VocoderRef

WEIGHTS, WEIGHTS_PT = "model.safetensors", "model.pt"
CONFIG, CODEC, METADATA = "config.json", "codec.json", "metadata.json"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded export: the model (eval mode), its config, codec reference and metadata."""

    model: Dubber
    config: ModelConfig
    codec: dict[str, Any]
    metadata: dict[str, Any]


def _version() -> str:
    try:
        return importlib_metadata.version("dubforge")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(
    path: str | Path,
    model: Dubber,
    config: ModelConfig,
    space: AcousticSpace,
    *,
    stage: str = "",
    step: int = 0,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write the export folder `path` (created if needed) and return it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    same_ratio = math.isclose(space.video_ratio, model.video_ratio, rel_tol=1e-9)
    if space.latent_dim != model.latent_dim or not same_ratio:
        raise ValueError(
            f"space {space.name!r} has latent width {space.latent_dim} and video ratio "
            f"{space.video_ratio:g}, the model {model.latent_dim} and {model.video_ratio:g}: "
            "export the model with the space it was trained in"
        )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        torch.save(state, out / WEIGHTS_PT)
    else:
        save_file(state, str(out / WEIGHTS))
    _write_json(out / CONFIG, config.model_dump(mode="json"))
    _write_json(out / CODEC, space.reference())
    meta = {
        "stage": stage,
        "step": int(step),
        "metrics": dict(metrics or {}),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dubforge": _version(),
    }
    _write_json(out / METADATA, meta)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: not a dubforge model export (save_checkpoint writes it)"
        )
    return json.loads(path.read_text())


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / WEIGHTS))
    if (folder / WEIGHTS_PT).is_file():
        return torch.load(folder / WEIGHTS_PT, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither {WEIGHTS} nor {WEIGHTS_PT}")


def load_checkpoint(
    path: str | Path, expected_config: ModelConfig | None = None, device: str = "cpu"
) -> Checkpoint:
    """Rebuild the model from an export folder. With `expected_config`, a stored config that
    differs raises ValueError naming every differing field."""
    folder = Path(path)
    config = ModelConfig.model_validate(_read_json(folder / CONFIG))
    if expected_config is not None:
        differ = diff_fields(config, expected_config)
        if differ:
            raise ValueError(
                f"checkpoint {folder} was saved with a different model config; differing "
                f"fields: {', '.join(differ)}. Use the checkpoint's config or another checkpoint"
            )
    codec = _read_json(folder / CODEC)
    model = build_model(config, latent_dim=codec["latent_dim"], video_ratio=_video_ratio(codec))
    try:
        result = model.load_state_dict(load_state(folder), strict=False)
    except RuntimeError as e:  # tensor shapes differ
        raise RuntimeError(
            f"checkpoint {folder}: weights do not fit preset {config.preset!r} with "
            f"{CODEC} {codec}; the files were mixed from different exports ({e})"
        ) from e
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"checkpoint {folder}: weights do not fit preset {config.preset!r}: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return Checkpoint(model.to(device).eval(), config, codec, _read_json(folder / METADATA))


def _pre_profile_mel(codec: dict[str, Any]) -> ValueError:
    return ValueError(
        f"{CODEC} {codec} names no mel profile: an export from an older dubforge whose mel "
        "space (hop 240) no vocoder decodes; retrain in a mel profile (vocos_24k, hifigan_22k)"
    )


def _video_ratio(codec: dict[str, Any]) -> float:
    """The stored video ratio; codec-space exports written before it store the same number
    as an integer `lip_repeat`."""
    if "video_ratio" in codec:
        return float(codec["video_ratio"])
    if codec["space"] == "codec" and "lip_repeat" in codec:
        return float(codec["lip_repeat"])
    raise _pre_profile_mel(codec)


def load_space(
    ckpt: Checkpoint, device: str = "cpu", vocoder: tuple[str, str | None] | None = None
) -> AcousticSpace:
    """The acoustic space of a checkpoint: the codec with its stored latent scale and codebook
    count, or the mel profile with its stored vocoder (kind, path), or with `vocoder` (kind,
    path) instead when given."""
    c, s = ckpt.codec, ckpt.config.space
    if c["space"] == "mel":
        if "mel_profile" not in c:
            raise _pre_profile_mel(c)
        if vocoder is not None:
            ref: VocoderRef | None = VocoderRef(*vocoder)
        else:
            ref = VocoderRef.from_dict(c["vocoder"]) if c["vocoder"] else None
        return build_space(
            "mel",
            ref.path if ref else None,
            mel_profile=c["mel_profile"],
            vocoder=ref.kind if ref else None,
            griffin_lim_iters=s.griffin_lim_iters,
            device=device,
        )
    return build_space(
        c["space"],
        c["path"],
        codebooks=c["codebooks"],
        latent_scale=c["latent_scale"],
        griffin_lim_iters=s.griffin_lim_iters,
        device=device,
    )
