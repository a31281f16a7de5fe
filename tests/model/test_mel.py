"""dubforge.mel: each profile's log-mel equals its reference front end, frame counts, refusals."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from dubforge.mel import log_mel, mel_filters, num_frames, resample_for
from dubforge.schema import MEL_PROFILES, mel_profile


def _speechy(sr: int, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Harmonics with a wobbling pitch over noise, silent at both ends: a wide dynamic range."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 30)) * 0.1
    wave = wave * (np.abs(t - seconds / 2) < seconds / 3) + 0.003 * rng.normal(size=len(t))
    return wave.astype(np.float32)


def _hifigan_reference(wave: np.ndarray, sr: int) -> np.ndarray:
    """HiFi-GAN V1 meldataset.mel_spectrogram rewritten in float64 numpy: reflect padding of
    (n_fft - hop) / 2, uncentred frames, periodic Hann, sqrt(|X|^2 + 1e-9), Slaney filters
    0..8 kHz, log(clamp(x, 1e-5))."""
    n_fft, hop, pad = 1024, 256, (1024 - 256) // 2
    y = np.pad(wave.astype(np.float64), pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]  # [n, n_fft]
    window = scipy.signal.get_window("hann", n_fft, fftbins=True)
    spec = np.fft.rfft(frames * window, axis=1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9).T  # [k, n]
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=80, fmin=0, fmax=8000, dtype=np.float64)
    return np.log(np.maximum(fb @ mag, 1e-5))


def test_hifigan_profile_is_hifigan_v1_meldataset():
    wave = _speechy(22050)
    ours = log_mel(wave, 22050, "hifigan_22k")
    ref = _hifigan_reference(wave, 22050)
    assert ours.shape == ref.shape == (80, 22050 // 256) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4)  # float32 vs float64
    assert ours.max() - ours.min() > 5  # the comparison spans speech and near-silence
    silent = log_mel(np.zeros(4000, np.float32), 22050, "hifigan_22k")
    assert np.all(silent == np.float32(np.log(1e-5)))  # sqrt(1e-9) per bin stays under it


def test_hifigan_profile_matches_bigvgan_meldataset_code():
    # BigVGAN ships HiFi-GAN's mel_spectrogram (adapted from jik876/hifi-gan), torch as ours
    from bigvgan.meldataset import mel_spectrogram

    wave = _speechy(22050, seconds=0.7, seed=1)
    theirs = mel_spectrogram(torch.from_numpy(wave)[None], 1024, 80, 22050, 256, 1024, 0, 8000)
    np.testing.assert_array_equal(log_mel(wave, 22050, "hifigan_22k"), theirs[0].numpy())


def test_vocos_profile_is_librosa_htk_magnitude_mel():
    wave = _speechy(24000, seed=2)
    ours = log_mel(wave, 24000, "vocos_24k")
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64),
        sr=24000,
        n_fft=1024,
        hop_length=256,
        win_length=1024,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=1.0,
        n_mels=100,
        fmin=0.0,
        fmax=12000.0,
        htk=True,
        norm=None,
        dtype=np.float64,
    )
    ref = np.log(np.maximum(mel, 1e-7))
    assert ours.shape == ref.shape == (100, 1 + 24000 // 256) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4)  # float32 vs float64
    silent = log_mel(np.zeros(4000, np.float32), 24000, "vocos_24k")
    assert np.all(silent == np.float32(np.log(1e-7)))


def test_vocos_filters_are_torchaudio_htk_without_norm():
    fb = mel_filters("vocos_24k").numpy()  # [100, 513]
    ref = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=100, htk=True, norm=None)
    np.testing.assert_allclose(fb, ref, atol=1e-5)
    assert fb.max() == pytest.approx(1.0, abs=0.02)  # unnormalised triangles peak near 1
    slaney = mel_filters("hifigan_22k").numpy()
    assert slaney.shape == (80, 513) and slaney[:, 372:].max() == 0  # nothing above 8 kHz


@pytest.mark.parametrize("name", sorted(MEL_PROFILES))
@pytest.mark.parametrize("n", [1000, 5119, 5120, 5121, 24000])
def test_frame_count_rule(name, n):
    p = mel_profile(name)
    mel = log_mel(np.full(n, 0.1, np.float32), p.sample_rate, p)
    expect = 1 + n // 256 if p.style == "vocos" else n // 256
    assert mel.shape == (p.n_mels, expect) == (p.n_mels, num_frames(n, p))


def test_a_tone_lands_in_its_bin():
    for name in MEL_PROFILES:
        p = mel_profile(name)
        t = np.arange(p.sample_rate) / p.sample_rate
        mel = log_mel(0.5 * np.sin(2 * np.pi * 1000 * t).astype(np.float32), p.sample_rate, p)
        fb = mel_filters(p).numpy()
        peak = int(np.argmax(fb[:, round(1000 * p.n_fft / p.sample_rate)]))
        assert abs(int(np.argmax(mel[:, 10:-10].mean(axis=1))) - peak) <= 1


def test_refuses_other_rates_and_short_waves_and_resamples():
    wave = _speechy(16000, seconds=0.5)
    with pytest.raises(ValueError, match=r"22050 Hz audio, got 16000 Hz.*resample_for"):
        log_mel(wave, 16000, "hifigan_22k")
    with pytest.raises(ValueError, match="at least"):
        log_mel(wave[:300], 24000, "vocos_24k")
    with pytest.raises(ValueError, match="unknown mel profile"):
        log_mel(wave, 24000, "vocos_22k")
    up = resample_for(wave, 16000, "hifigan_22k")
    assert up.dtype == np.float32 and abs(len(up) - len(wave) * 22050 / 16000) <= 1
    assert log_mel(up, 22050, "hifigan_22k").shape == (80, len(up) // 256)
    t = np.arange(16000) / 16000
    tone = resample_for(np.sin(2 * np.pi * 440 * t), 16000, mel_profile("vocos_24k"))
    spec = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spec) * 24000 / (2 * (len(spec) - 1)) - 440) < 2
    same = resample_for(tone, 24000, "vocos_24k")
    assert np.array_equal(same, tone)
