"""Log-mel spectrograms exactly as pretrained vocoders read them, one per `MelProfile`.

A vocoder only decodes the mel its own front end computes: the same sample rate, STFT padding,
window, filterbank and log floor (DESIGN.md "Contracts between stages": the vocoder chooses the
profile). Two front ends, named by `MelProfile.style`:

- "hifigan": HiFi-GAN V1 `meldataset.mel_spectrogram` (jik876/hifi-gan; BigVGAN's is the same):
  reflect-pad (n_fft - hop) / 2 on both sides, `torch.stft(center=False)` with a periodic Hann
  window, magnitude sqrt(re^2 + im^2 + 1e-9), librosa's Slaney filterbank (area-normalised,
  fmin..fmax), log(clamp(mel, 1e-5)).
- "vocos": Vocos `MelSpectrogramFeatures(padding="center")`, i.e. torchaudio
  `MelSpectrogram(center=True, pad_mode="reflect", power=1)` with HTK filters and no area
  norm (torchaudio `melscale_fbanks`), log(clip(mel, 1e-7)) (vocos `safe_log`).

Frame counts for a wave of L samples (`num_frames`): "hifigan" gives
(L + 2 * ((n_fft - hop) // 2) - n_fft) // hop + 1 frames, which is L // hop for the profiles
here (frame t covers samples [t * hop, (t + 1) * hop)); "vocos" gives 1 + L // hop (frame t is
centred on sample t * hop).

Shape key: m = mel bins, n = frames, k = STFT bins (n_fft // 2 + 1).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from dubforge.schema import MelProfile, mel_profile

STYLES = ("hifigan", "vocos")
HIFIGAN_EPS = 1e-9  # meldataset.py: sqrt(spec.pow(2).sum(-1) + 1e-9)


def _profile(profile: MelProfile | str) -> MelProfile:
    prof = mel_profile(profile) if isinstance(profile, str) else profile
    if prof.style not in STYLES:
        raise ValueError(f"mel profile {prof.name!r} has style {prof.style!r}; known: {STYLES}")
    return prof


def num_frames(n_samples: int, profile: MelProfile | str) -> int:
    """Mel frames `log_mel` returns for a wave of `n_samples` samples in `profile`."""
    p = _profile(profile)
    if p.style == "vocos":
        return 1 + n_samples // p.hop
    pad = (p.n_fft - p.hop) // 2
    return (n_samples + 2 * pad - p.n_fft) // p.hop + 1


def min_samples(profile: MelProfile | str) -> int:
    """The shortest wave `log_mel` accepts: reflect padding needs more samples than it pads,
    and the hifigan front end needs one whole window."""
    p = _profile(profile)
    if p.style == "vocos":
        return p.n_fft // 2 + 1
    pad = (p.n_fft - p.hop) // 2
    return max(pad + 1, p.n_fft - 2 * pad)


@functools.lru_cache(maxsize=8)
def _filters(profile: MelProfile) -> torch.Tensor:
    if profile.style == "vocos":
        return _htk_filters(profile).T.contiguous()  # torchaudio keeps [k, m]; we use [m, k]
    # librosa is imported here only: its import costs about a second and only this front end
    # (and resampling) needs it
    import librosa

    fb = librosa.filters.mel(
        sr=profile.sample_rate,
        n_fft=profile.n_fft,
        n_mels=profile.n_mels,
        fmin=profile.fmin,
        fmax=profile.fmax,
    )
    return torch.from_numpy(fb).float()  # meldataset.py: torch.from_numpy(mel).float()


def _htk_filters(p: MelProfile) -> torch.Tensor:
    """torchaudio.functional.melscale_fbanks(mel_scale="htk", norm=None), float32 as there:
    [k, m]."""
    n_freqs = p.n_fft // 2 + 1
    f_max = p.fmax if p.fmax is not None else float(p.sample_rate // 2)
    all_freqs = torch.linspace(0, p.sample_rate // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + p.fmin / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    m_pts = torch.linspace(m_min, m_max, p.n_mels + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]  # [m + 1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # [k, m + 2]
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


def mel_filters(profile: MelProfile | str) -> torch.Tensor:
    """The profile's mel filterbank [m, k] (float32), as its reference front end builds it."""
    return _filters(_profile(profile)).clone()


def log_mel(
    wave: np.ndarray | torch.Tensor, sample_rate: int, profile: MelProfile | str
) -> np.ndarray:
    """Log-mel [m, n] (float32) of a mono wave in `profile`, bit-for-bit the computation of the
    profile's reference front end (module docstring), so its vocoder can decode it. The wave
    must already be at the profile's sample rate (`resample_for`); n follows `num_frames`."""
    p = _profile(profile)
    if sample_rate != p.sample_rate:
        raise ValueError(
            f"mel profile {p.name!r} reads {p.sample_rate} Hz audio, got {sample_rate} Hz; "
            f"resample first: dubforge.mel.resample_for(wave, {sample_rate}, {p.name!r})"
        )
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if x.ndim != 1 or len(x) < min_samples(p):
        raise ValueError(
            f"log_mel needs a 1-D wave of at least {min_samples(p)} samples for profile "
            f"{p.name!r}, got shape {tuple(x.shape)}"
        )
    window = torch.hann_window(p.win)
    if p.style == "vocos":
        spec = torch.stft(
            x,
            p.n_fft,
            p.hop,
            p.win,
            window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()  # spec: [k, n]; torchaudio's power=1 is the plain magnitude
    else:
        pad = (p.n_fft - p.hop) // 2
        x = torch.nn.functional.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
        spec = torch.stft(
            x,
            p.n_fft,
            p.hop,
            p.win,
            window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + HIFIGAN_EPS)  # [k, n]
    mel = torch.matmul(_filters(p), spec)  # mel: [m, n]
    return torch.log(torch.clamp(mel, min=p.log_floor)).numpy()


def resample_for(wave: np.ndarray, sample_rate: int, profile: MelProfile | str) -> np.ndarray:
    """A mono float32 wave at `sample_rate` resampled to the profile's rate (soxr, high quality
    through librosa); returned unchanged when the rates already agree."""
    p = _profile(profile)
    wave = np.asarray(wave, dtype=np.float32)
    if sample_rate == p.sample_rate:
        return wave
    import librosa

    out = librosa.resample(wave, orig_sr=sample_rate, target_sr=p.sample_rate, res_type="soxr_hq")
    return out.astype(np.float32, copy=False)
