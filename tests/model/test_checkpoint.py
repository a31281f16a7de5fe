"""Inference export: round trip, folder contents, config mismatch, codec reference."""

from __future__ import annotations

import json

import pytest
import torch

from dubforge.model.batch import collate
from dubforge.model.checkpoint import load_checkpoint, load_space, save_checkpoint
from dubforge.model.config import ModelConfig
from dubforge.model.flow import Guidance
from dubforge.model.presets import build_model, space_from_config
from dubforge.model.spaces import build_space
from dubforge.model.vocoders import bundled_hifigan
from tests.model.conftest import make_record


def _trained_ish(cfg: ModelConfig, space):
    torch.manual_seed(0)
    model = build_model(cfg, space)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path):
    cfg = ModelConfig()
    space = space_from_config(cfg.space)
    model = _trained_ish(cfg, space)
    out = save_checkpoint(tmp_path / "ckpt", model, cfg, space, stage="tts", step=12,
                          metrics={"loss": 0.5})  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "codec.json",
        "config.json",
        "metadata.json",
        "model.safetensors",
    ]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["stage"] == "tts" and meta["step"] == 12 and meta["metrics"] == {"loss": 0.5}
    assert meta["created"].endswith("+00:00") and meta["dubforge"]
    codec = json.loads((out / "codec.json").read_text())
    assert codec == {
        "space": "mel",
        "mel_profile": "vocos_24k",
        "vocoder": None,
        "sample_rate": 24000,
        "frame_rate": 93.75,
        "latent_dim": 100,
        "video_ratio": 3.75,
    }
    ckpt = load_checkpoint(out, expected_config=cfg)
    assert ckpt.config == cfg and not ckpt.model.training
    meta_rec, arrays = make_record("a/00000", 0.4)
    batch = collate([({**meta_rec, "ref_frames": 8}, arrays)], space, tasks="v2s", train=False)
    a = model.sample(batch, nfe=4, cfg=Guidance(), seed=3)
    b = ckpt.model.sample(batch, nfe=4, cfg=Guidance(), seed=3)
    assert torch.equal(a, b)
    assert load_space(ckpt).name == "mel"


def test_mismatching_config_names_the_fields(tmp_path):
    cfg = ModelConfig()
    space = space_from_config(cfg.space)
    save_checkpoint(tmp_path / "c", build_model(cfg, space), cfg, space)
    dropout = {"full": 0.75, "null": 0.11}
    other = ModelConfig.model_validate({"sampler": {"nfe": 16}, "dropout": dropout})
    with pytest.raises(ValueError, match=r"dropout\.full, dropout\.null, sampler\.nfe"):
        load_checkpoint(tmp_path / "c", expected_config=other)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "nothing")


def test_weights_of_another_preset_are_refused(tmp_path):
    cfg = ModelConfig()
    space = space_from_config(cfg.space)
    save_checkpoint(tmp_path / "c", build_model(cfg, space), cfg, space)
    stored = json.loads((tmp_path / "c" / "codec.json").read_text())
    (tmp_path / "c" / "codec.json").write_text(json.dumps({**stored, "latent_dim": 16}))
    with pytest.raises(RuntimeError, match="do not fit preset 'tiny'"):
        load_checkpoint(tmp_path / "c")


def test_codec_checkpoint_keeps_its_scale(tmp_path, encodec_dir):
    cfg = ModelConfig.model_validate(
        {"space": {"name": "codec", "path": str(encodec_dir), "codebooks": 8}}
    )
    space = space_from_config(cfg.space)
    model = build_model(cfg, space)
    assert model.latent_dim == 16 and model.video_ratio == 3.0
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "c", model, cfg, space))
    assert ckpt.codec["codec_name"] == "encodec" and ckpt.codec["codebooks"] == 8
    assert load_space(ckpt).latent_scale == pytest.approx(space.latent_scale)
    # an export from before video_ratio stored the same number as lip_repeat
    codec = json.loads((tmp_path / "c" / "codec.json").read_text())
    codec["lip_repeat"] = round(codec.pop("video_ratio"))
    (tmp_path / "c" / "codec.json").write_text(json.dumps(codec))
    assert load_checkpoint(tmp_path / "c").model.video_ratio == 3.0


def test_mel_checkpoint_keeps_its_profile_and_vocoder(tmp_path):
    cfg = ModelConfig()
    path = str(bundled_hifigan())
    space = build_space("mel", path, mel_profile="hifigan_22k", vocoder="hifigan")
    model = build_model(cfg, space)
    assert (model.latent_dim, model.video_ratio) == (80, 22050 / 256 / 25)
    other = build_model(cfg, latent_dim=80, video_ratio=3.75)
    with pytest.raises(ValueError, match="video ratio 3.44531, the model 80 and 3.75"):
        save_checkpoint(tmp_path / "x", other, cfg, space)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "c", model, cfg, space))
    assert ckpt.codec["mel_profile"] == "hifigan_22k"
    assert ckpt.codec["vocoder"] == {"kind": "hifigan", "path": path}
    assert ckpt.model.video_ratio == model.video_ratio
    again = load_space(ckpt)
    assert again.reference() == space.reference() and not again.fallback
    # an export from before mel profiles (hop-240 mel, lip_repeat 4) is refused
    old = {"space": "mel", "path": None, "sample_rate": 24000, "frame_rate": 100.0, "lip_repeat": 4}
    (tmp_path / "c" / "codec.json").write_text(json.dumps(old | {"latent_dim": 80}))
    with pytest.raises(ValueError, match="names no mel profile.*retrain"):
        load_checkpoint(tmp_path / "c")
