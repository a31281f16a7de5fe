"""SyncNet: shapes, weight loading, MFCC front end, and the LSE-D / LSE-C computation."""

from __future__ import annotations

import numpy as np
import pytest
import python_speech_features
import torch

from dubforge.eval.syncnet import SyncNet, load_syncnet, lse_metrics, lse_scores, mfcc
from tests.eval.tiny_models import save_random_syncnet

RATE, FPS = 16000, 25.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_syncnet(tmp_path_factory.mktemp("syncnet") / "syncnet.model")


def test_towers_embed_windows():
    net = SyncNet().eval()
    with torch.no_grad():
        assert net.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert net.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)


def test_loader_restores_the_saved_weights(weights, tmp_path):
    net = load_syncnet(weights)
    saved = torch.load(weights, weights_only=True)
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # a checkpoint without BatchNorm batch counters (older torch) still loads
    old = {k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    load_syncnet(tmp_path / "old.model")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.model")
    with pytest.raises(ValueError, match="not a SyncNet"):
        load_syncnet(tmp_path / "bad.model")
    with pytest.raises(ValueError, match="syncnet_path"):
        load_syncnet(tmp_path / "missing.model")


def test_mfcc_is_python_speech_features_on_the_int16_wav():
    rng = np.random.default_rng(0)
    x = np.concatenate([0.1 * rng.standard_normal(RATE), [1.5, -1.5]])  # two clipped samples
    m = mfcc(x)
    assert m.shape == (13, 99)  # 1 + ceil((16002 - 400) / 160) frames at 100 Hz
    # syncnet_python: wavfile.read -> int16, then zip(*mfcc(audio, 16000)) stacked
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
    expected = np.stack(
        [np.array(c) for c in zip(*python_speech_features.mfcc(pcm, RATE), strict=True)]
    )
    np.testing.assert_array_equal(m, expected)
    # c0 is the log energy of each pre-emphasised 25 ms frame of the int16 samples
    y = pcm[:400].astype(np.float64)
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    assert m[0, 0] == pytest.approx(np.log((np.abs(np.fft.rfft(y, 512)) ** 2).sum() / 512))


def test_random_syncnet_gives_finite_scores(weights):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 48, 48, 3), dtype=np.uint8)
    wave = 0.1 * rng.standard_normal(int(RATE * 12 / FPS)).astype(np.float32)
    res = lse_metrics(load_syncnet(weights), wave, RATE, frames, FPS, vshift=3)
    assert np.isfinite(res["lse_d"].value) and res["lse_d"].value > 0
    assert res["lse_c"].value >= 0  # median - min of the same distances
    assert -3 <= res["lse_d"].details["offset"] <= 3


def test_without_weights_or_video_lse_is_not_available(weights):
    wave = np.zeros(RATE, np.float32)
    res = lse_metrics(None, wave, RATE, None, FPS)
    assert res["lse_d"].value is None and "syncnet_path" in res["lse_d"].reason
    res = lse_metrics(load_syncnet(weights), wave, RATE, None, FPS)
    assert res["lse_c"].value is None and "video" in res["lse_c"].reason


class _Blinker(torch.nn.Module):
    """A stand-in SyncNet whose embeddings agree exactly when sound and picture agree: a video
    window embeds as which of its 5 frames are bright, an audio window as which of its 5
    video-frame-long stretches is loud (c0 = log energy > 0 in the MFCC frame 4k + 1, which lies
    wholly inside video frame k)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward_lip(self, v: torch.Tensor) -> torch.Tensor:  # [B, 3, 5, 224, 224]
        return (v.mean(dim=(1, 3, 4)) > 128).float()

    def forward_aud(self, m: torch.Tensor) -> torch.Tensor:  # [B, 1, 13, 20]
        return (m[:, 0, 0].reshape(-1, 5, 4)[..., 1] > 0).float()


def _blinking_clip(n: int, lag: int) -> tuple[np.ndarray, np.ndarray]:
    on = np.random.default_rng(1).random(n) > 0.5
    frames = np.where(on[:, None, None, None], 220, 20).astype(np.uint8) * np.ones(
        (1, 16, 16, 3), np.uint8
    )
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(640) / RATE)
    audio_on = np.concatenate([np.zeros(lag, bool), on])[:n]  # sound `lag` frames late
    wave = np.concatenate([tone if a else np.zeros(640) for a in audio_on])
    return wave.astype(np.float32), frames


def test_lse_finds_the_offset_and_perfect_sync():
    net = _Blinker()
    wave, frames = _blinking_clip(60, 0)
    d, c, offset = lse_scores(net, wave, RATE, frames, FPS, vshift=5)
    assert offset == 0 and d < 1e-3 and c > 1.0  # aligned: identical embeddings
    wave, frames = _blinking_clip(60, 3)
    d_lag, _, offset = lse_scores(net, wave, RATE, frames, FPS, vshift=5)
    assert offset == -3  # syncnet_python's sign: negative when the audio lags
    d_fixed, _, _ = lse_scores(net, wave, RATE, frames, FPS, vshift=1)
    assert d_fixed > d_lag + 0.5  # a search window too small to reach the lag


def test_video_is_resampled_to_25_fps():
    net = _Blinker()
    wave, frames = _blinking_clip(40, 0)
    doubled = np.repeat(frames, 2, axis=0)  # the same clip at 50 fps
    assert lse_scores(net, wave, RATE, doubled, 50.0, vshift=3)[2] == 0
    with pytest.raises(ValueError, match="6 video frames"):
        lse_scores(net, wave[:3200], RATE, frames[:5], FPS)
    with pytest.raises(ValueError, match="RGB"):
        lse_scores(net, wave, RATE, frames[..., 0], FPS)
