"""Tiny random-initialised RoFormer separators that audio-separator loads offline.

Each factory saves a state dict (.ckpt) and the YAML config audio-separator reads next to it, and
lists the pair in the folder's download_checks.json so `Separator.load_model()` finds it without
the network. The architecture classes are audio-separator's own, so the checkpoint loads into the
very model the stage runs. Sizes are picked for speed (a 2 s clip separates in well under a
second on 2 CPU cores), not quality: the stems are noise-shaped but finite.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from audio_separator.separator.uvr_lib_v5.roformer.bs_roformer import BSRoformer
from audio_separator.separator.uvr_lib_v5.roformer.mel_band_roformer import MelBandRoformer

from dubforge.ingest.separate import DOWNLOAD_LISTS

N_FFT = 256  # 129 frequency bins: keeps the band-split and mask-estimator layers small
HOP = 128

# Shared by both families; stereo because audio-separator always feeds a [2, m] mix.
_COMMON = {
    "dim": 32,
    "depth": 1,
    "stereo": True,
    "num_stems": 1,  # one target (vocals); audio-separator makes "other" = mix - vocals
    "time_transformer_depth": 1,
    "freq_transformer_depth": 1,
    "dim_head": 16,
    "heads": 2,
    "attn_dropout": 0.0,
    "ff_dropout": 0.0,
    "flash_attn": True,
    "mask_estimator_depth": 1,
    "stft_n_fft": N_FFT,
    "stft_hop_length": HOP,
    "stft_win_length": N_FFT,
    # a tuple on purpose: yaml.dump writes it as !!python/tuple, which audio-separator's
    # FullLoader reads back as a tuple; a YAML list fails MelBandRoformer's beartype check
    "multi_stft_resolutions_window_sizes": (256, 128),
}

# BS-RoFormer splits the 129 STFT bins into fixed bands that must add up to n_fft // 2 + 1
_BS_FREQS_PER_BANDS = (2, 2, 4, 4, 8, 8, 16, 16, 32, 37)


def _config(model_args: dict) -> dict:
    """The YAML layout of the published Kim Mel-RoFormer configs, sized down."""
    return {
        "audio": {
            "chunk_size": HOP * 255,
            "dim_f": N_FFT // 2,
            "dim_t": 256,
            "hop_length": HOP,
            "n_fft": N_FFT,
            "num_channels": 2,
            "sample_rate": 44100,
            "min_mean_abs": 0.0,
        },
        "model": model_args,
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
        "inference": {"batch_size": 1, "dim_t": 256, "num_overlap": 2},
    }


def _list_model(model_dir: Path, friendly_name: str, ckpt_name: str, yaml_name: str) -> None:
    """Add {friendly_name: {ckpt: yaml}} under roformer_download_list, keeping other entries."""
    checks_path = model_dir / "download_checks.json"
    checks = json.loads(checks_path.read_text()) if checks_path.exists() else {}
    for key in DOWNLOAD_LISTS:
        checks.setdefault(key, {})
    checks["roformer_download_list"][friendly_name] = {ckpt_name: yaml_name}
    checks_path.write_text(json.dumps(checks, indent=2))


def _save(model_dir: Path, stem: str, model: torch.nn.Module, model_args: dict) -> str:
    model_dir.mkdir(parents=True, exist_ok=True)
    ckpt_name, yaml_name = f"{stem}.ckpt", f"{stem}.yaml"
    torch.save(model.state_dict(), model_dir / ckpt_name)
    (model_dir / yaml_name).write_text(yaml.dump(_config(model_args)))
    _list_model(model_dir, f"Roformer Model: {stem} (test)", ckpt_name, yaml_name)
    return ckpt_name


def make_tiny_mel_roformer(model_dir: Path, seed: int = 0) -> str:
    """Save a ~0.3 M-param MelBandRoformer + YAML + download_checks.json; return the ckpt name."""
    args = {**_COMMON, "num_bands": 8, "sample_rate": 44100}
    torch.manual_seed(seed)
    return _save(model_dir, "tiny_mel_band_roformer", MelBandRoformer(**args), args)


def make_tiny_bs_roformer(model_dir: Path, seed: int = 0) -> str:
    """Save a small BSRoformer + YAML + download_checks.json; return the ckpt name."""
    # audio-separator's loader does not pass mask_estimator_depth to BSRoformer, so the model it
    # builds always has BSRoformer's default of 2: build the same or the state dict will not fit
    args = {**_COMMON, "freqs_per_bands": _BS_FREQS_PER_BANDS, "mask_estimator_depth": 2}
    torch.manual_seed(seed)
    return _save(model_dir, "tiny_bs_roformer", BSRoformer(**args), args)
