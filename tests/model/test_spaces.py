"""Acoustic spaces: mel and codec latents, decoding, frame-rate alignment with video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EncodecModel

from dubforge.model.batch import collate
from dubforge.model.spaces import CodecSpace, MelSpace, build_space
from tests.ingest.codec_model import make_tiny_codec
from tests.model.conftest import make_record


def test_mel_space_latents_and_rates():
    space = MelSpace()
    meta, arrays = make_record(seconds=0.5)
    z = space.latents(arrays, "speech")
    assert z.shape == (50, 100) and z.dtype == torch.float32
    assert torch.equal(z, torch.from_numpy(arrays["speech.mel"].astype(np.float32).T))
    assert space.frame_rate == 100 and space.frames_per_video_frame() == 4
    with pytest.raises(ValueError, match=r"speech\.mel.*codec\.mel: true"):
        space.latents({"speech.codes": np.zeros((8, 10), np.int16)}, "speech")


def test_griffin_lim_inverts_a_real_log_mel_to_the_right_length():
    from dubforge.ingest.tokenize import log_mel

    t = np.arange(24000) / 24000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = torch.from_numpy(log_mel(wave).astype(np.float32).T)[None]  # [1, 100, 100]
    out = MelSpace(griffin_lim_iters=8).decode(mel)
    assert out.shape == (1, 24000) and bool(torch.isfinite(out).all())
    spec = np.abs(np.fft.rfft(out[0, 2400:-2400].numpy()))
    assert abs(np.argmax(spec) * 24000 / len(spec) / 2 - 440) < 15  # the tone survives
    again = MelSpace(griffin_lim_iters=8).decode(mel)
    assert torch.equal(out, again)  # seeded phase: deterministic


def test_mel_vocoder_by_torchscript_path(tmp_path):
    class Voc(torch.nn.Module):
        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            return mel.mean(dim=1).repeat_interleave(240, dim=-1)[:, None]  # [b, 1, n * 240]

    path = tmp_path / "voc.pt"
    torch.jit.save(torch.jit.script(Voc()), str(path))
    space = build_space("mel", str(path))
    out = space.decode(torch.ones(2, 7, 100))
    assert out.shape == (2, 7 * 240) and bool(out.eq(1).all())
    assert space.reference()["path"] == str(path)


def test_codec_space_codes_to_latents_is_the_quantizer_sum(encodec_dir):
    space = build_space("codec", str(encodec_dir), codebooks=8)
    assert (space.latent_dim, space.frame_rate, space.frames_per_video_frame()) == (16, 75.0, 3)
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
    assert len(waves[0]["speech"]) == 30 * 240 and len(waves[1]["background"]) == 20 * 240
    assert waves[0]["speech"].dtype == np.float32
