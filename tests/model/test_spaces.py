"""Acoustic spaces: mel and codec latents, decoding, frame-rate alignment with video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EncodecModel

from dubforge.mel import log_mel
from dubforge.model.batch import collate
from dubforge.model.spaces import CodecSpace, MelSpace, build_space
from dubforge.model.vocoders import bundled_hifigan
from tests.ingest.codec_model import make_tiny_codec
from tests.model.conftest import make_record


def test_mel_space_latents_and_rates():
    space = MelSpace()  # vocos_24k: F5-TTS's mel
    meta, arrays = make_record(seconds=0.5)
    z = space.latents(arrays, "speech")
    assert z.shape == (47, 100) and z.dtype == torch.float32
    assert torch.equal(z, torch.from_numpy(arrays["speech.mel"].astype(np.float32).T))
    assert (space.latent_dim, space.frame_rate, space.sample_rate) == (100, 93.75, 24000)
    assert space.video_ratio == 3.75 and space.fallback
    with pytest.raises(ValueError, match="not an integer multiple of 25 fps.*video_ratio"):
        space.frames_per_video_frame()
    with pytest.raises(ValueError, match=r"speech\.mel.*codec\.mel: vocos_24k"):
        space.latents({"speech.codes": np.zeros((8, 10), np.int16)}, "speech")
    hifi = build_space("mel", mel_profile="hifigan_22k")
    assert (hifi.latent_dim, hifi.sample_rate) == (80, 22050)
    assert hifi.video_ratio == pytest.approx(22050 / 256 / 25)
    assert hifi.latents(make_record(profile="hifigan_22k")[1], "speech").shape == (86, 80)
    with pytest.raises(ValueError, match=r"profile 'hifigan_22k' has 80 bins"):
        hifi.latents(arrays, "speech")


def test_mel_space_checks_the_record_profile():
    space = MelSpace("hifigan_22k")
    space.check_profile("hifigan_22k")
    for other in ("vocos_24k", None):
        with pytest.raises(ValueError, match=rf"in profile {other!r}.*reads 'hifigan_22k'"):
            space.check_profile(other)
    with pytest.raises(ValueError, match="unknown mel profile"):
        MelSpace("mel_100hz")


def test_griffin_lim_fallback_inverts_a_real_log_mel_to_the_right_length():
    t = np.arange(24000) / 24000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = torch.from_numpy(log_mel(wave, 24000, "vocos_24k").T)[None]  # [1, 94, 100]
    space = MelSpace(griffin_lim_iters=8)
    out = space.decode(mel)
    assert out.shape == (1, 93 * 256) and bool(torch.isfinite(out).all())
    spec = np.abs(np.fft.rfft(out[0, 2400:-2400].numpy()))
    assert abs(np.argmax(spec) * 24000 / len(spec) / 2 - 440) < 15  # the tone survives
    assert torch.equal(out, MelSpace(griffin_lim_iters=8).decode(mel))  # seeded phase
    assert space.fallback and space.reference()["vocoder"] is None


def test_mel_space_decodes_through_its_configured_vocoder():
    path = str(bundled_hifigan())
    space = build_space("mel", path, mel_profile="hifigan_22k", vocoder="hifigan")
    assert not space.fallback and space.vocoder.kind == "hifigan"
    ref = space.reference()
    assert ref["mel_profile"] == "hifigan_22k" and ref["vocoder"] == {
        "kind": "hifigan",
        "path": path,
    }
    mel = torch.full((1, 6, 80), -6.0)
    assert space.decode(mel).shape == (1, 6 * 256)
    with pytest.raises(ValueError, match=r"reads a different mel than profile 'vocos_24k'"):
        build_space("mel", path, mel_profile="vocos_24k", vocoder="hifigan")
    with pytest.raises(ValueError, match="without its kind"):
        build_space("mel", path, mel_profile="hifigan_22k")
    explicit = build_space("mel", mel_profile="hifigan_22k", vocoder="griffin_lim")
    assert explicit.fallback and explicit.reference()["vocoder"] == {
        "kind": "griffin_lim",
        "path": None,
    }


def test_codec_space_codes_to_latents_is_the_quantizer_sum(encodec_dir):
    space = build_space("codec", str(encodec_dir), codebooks=8)
    assert (space.latent_dim, space.frame_rate, space.frames_per_video_frame()) == (16, 75.0, 3)
    assert space.video_ratio == 3.0 and not space.fallback
    space.check_profile(None)  # codes do not depend on a mel profile
    space.check_profile("hifigan_22k")
    meta, arrays = make_record(seconds=0.4, codes=8)
    z = space.latents(arrays, "speech")  # [30, 16]
    assert z.shape == (30, 16)
    model = EncodecModel.from_pretrained(str(encodec_dir))
    codes = torch.from_numpy(arrays["speech.codes"].astype(np.int64))
    manual = sum(model.quantizer.layers[q].codebook.embed[codes[q]] for q in range(8))  # [30, 16]
    torch.testing.assert_close(z * space.latent_scale, manual, rtol=1e-5, atol=1e-5)
    # the estimated scale brings latents of random codes to unit RMS
    assert 0.7 < float(z.pow(2).mean().sqrt()) < 1.3
    wave = space.decode(z[None])
    assert wave.shape == (1, 30 * 320) and bool(torch.isfinite(wave).all())
    b = collate([(meta, arrays)], space, tasks="v2st", seed=0)
    assert b.latents.shape == (1, 2, 30, 16) and b.lips.shape[1] * 3 == 30
    with pytest.raises(ValueError, match="codebooks"):
        space.latents({"speech.codes": arrays["speech.codes"][:4]}, "speech")


def test_codecs_that_cannot_align_or_load_are_refused(tmp_path):
    dac = build_space("codec", str(make_tiny_codec(tmp_path / "dac", "dac")))
    assert dac.frame_rate == 31.25 and dac.latent_dim == 64
    with pytest.raises(ValueError, match="not an integer multiple of 25 fps"):
        dac.frames_per_video_frame()
    assert dac.video_ratio == 1.25  # lips reach it by interpolation
    z = dac.latents({"bg.codes": np.zeros((4, 5), np.int16)}, "background")
    assert z.shape == (5, 64)
    with pytest.raises(ValueError, match="supports"):
        CodecSpace(str(make_tiny_codec(tmp_path / "mimi", "mimi")))
    with pytest.raises(RuntimeError, match="save_pretrained"):
        CodecSpace(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown acoustic space"):
        build_space("tokens")


def test_to_waves_decodes_each_stream_to_its_clip_length():
    from dubforge.model.batch import to_waves

    space = MelSpace(griffin_lim_iters=2)
    recs = [make_record("a/00000", 0.3, face=False), make_record("b/00000", 0.2, face=False)]
    batch = collate(recs, space, tasks=["v2st", "v2a"], train=False)
    waves = to_waves(space, batch.latents, batch)
    assert [sorted(w) for w in waves] == [["background", "speech"], ["background"]]
    # vocos_24k Griffin-Lim: n frames centred on multiples of the hop -> (n - 1) * 256 samples
    assert len(waves[0]["speech"]) == 27 * 256 and len(waves[1]["background"]) == 18 * 256
    assert waves[0]["speech"].dtype == np.float32
