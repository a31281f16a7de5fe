"""LSE-D / LSE-C lip-sync scores with a SyncNet loaded from a local weights file.

SyncNet (Chung & Zisserman, ACCV 2016 workshops) as released in syncnet_python and used by
Wav2Lip's evaluation (Prajwal et al., ACM MM 2020), the LSE-C/LSE-D of every dubbing paper here.
Our own implementation; module names and layer order match syncnet_python's `S`, so its
`syncnet_v2.model` state dict loads unchanged.

Inputs, as the released evaluation feeds them:
  video  face-track crops resized to 224x224, BGR, float 0..255, 25 fps; windows of 5 frames
  audio  16 kHz int16 samples -> MFCC by python_speech_features with its defaults (25 ms /
         10 ms, 512-point FFT, 26 mel bands, 13 coefficients, lifter 22, c0 = log frame
         energy, pre-emphasis 0.97) at 100 Hz; video frame k pairs with MFCC frames 4k .. 4k+19
Scores, with v_k, a_k the 1024-d video/audio embeddings of window k (K windows) and
zero-padded audio embeddings outside 0..K-1:
    D(o)  = 1/K * sum_k || v_k - a_{k+o} ||_2          for offsets o = -15 .. 15 frames
    LSE-D = min_o D(o)                  (lower = better sync)
    LSE-C = median_o D(o) - min_o D(o)  (higher = more confident sync)
Shapes: B windows, T frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import python_speech_features
import torch
from torch import nn

from dubforge.eval.audio import check_wave, resample
from dubforge.eval.results import MetricResult, measured, not_available

VIDEO_FPS, AUDIO_RATE, CROP = 25, 16000, 224


def _bn_relu(conv: nn.Module, ch: int, bn: type[nn.Module]) -> list[nn.Module]:
    return [conv, bn(ch), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Audio (MFCC [B, 1, 13, 20]) and video ([B, 3, 5, 224, 224]) towers -> [B, 1024] each."""

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        c2, c3 = nn.Conv2d, nn.Conv3d
        b2, b3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(  # [B, 1, 13, 20] -> [B, 512, 1, 1]
            *_bn_relu(c2(1, 64, 3, padding=1), 64, b2),
            nn.MaxPool2d(1, 1),
            *_bn_relu(c2(64, 192, 3, padding=1), 192, b2),
            nn.MaxPool2d(3, (1, 2)),  # 13x20 -> 11x9
            *_bn_relu(c2(192, 384, 3, padding=1), 384, b2),
            *_bn_relu(c2(384, 256, 3, padding=1), 256, b2),
            *_bn_relu(c2(256, 256, 3, padding=1), 256, b2),
            nn.MaxPool2d(3, 2),  # 11x9 -> 5x4
            *_bn_relu(c2(256, 512, (5, 4)), 512, b2),
        )
        self.netcnnlip = nn.Sequential(  # [B, 3, 5, 224, 224] -> [B, 512, 1, 1, 1]
            *_bn_relu(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, b3),  # -> 1x109x109
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),  # -> 54
            *_bn_relu(c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, b3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),  # 26 -> 13
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),  # -> 6
            *_bn_relu(c3(256, 512, (1, 6, 6)), 512, b3),
        )
        self.netfcaud = self._head(embed_dim)
        self.netfclip = self._head(embed_dim)

    @staticmethod
    def _head(embed_dim: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] MFCC windows -> [B, embed_dim]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] BGR 0..255 windows -> [B, embed_dim]."""
        return self.netfclip(self.netcnnlip(video).flatten(1))


def load_syncnet(path: str | Path, device: str = "cpu") -> SyncNet:
    """SyncNet with the state dict at `path` (syncnet_python layout), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"EvalConfig.syncnet_path {path} does not exist; point it at a SyncNet "
            "state dict (e.g. syncnet_v2.model) or unset it"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = SyncNet()
    missing, unexpected = net.load_state_dict(state, strict=False)
    # checkpoints from before BatchNorm counted its batches lack only these counters
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a SyncNet state dict: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return net.to(device).eval()


def mfcc(wave16k: np.ndarray) -> np.ndarray:
    """[13, F] MFCC at 100 Hz of float audio in [-1, 1] at 16 kHz, exactly as syncnet_python
    computes it: `python_speech_features.mfcc(audio, 16000)` with its defaults on the int16
    samples of the extracted wav file, transposed to coefficients x frames."""
    # the int16 samples ffmpeg writes (round to nearest, saturate) and wavfile.read returns
    pcm = np.clip(np.round(np.asarray(wave16k, np.float64) * 32768.0), -32768, 32767)
    feats = python_speech_features.mfcc(pcm.astype(np.int16), AUDIO_RATE)  # [F, 13]
    return np.ascontiguousarray(feats.T)


def _video_tensor(frames: np.ndarray, fps: float) -> torch.Tensor:
    """[1, 3, T, 224, 224] BGR float at 25 fps from RGB uint8 frames [T, H, W, 3] at `fps`."""
    import cv2

    v = np.asarray(frames)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"SyncNet needs RGB face crops [T, H, W, 3], got shape {v.shape}")
    # nearest-frame resampling to SyncNet's 25 fps
    n = int(np.floor(len(v) / fps * VIDEO_FPS + 1e-6))
    idx = np.minimum(np.round(np.arange(n) * fps / VIDEO_FPS).astype(int), len(v) - 1)
    crops = [cv2.resize(np.ascontiguousarray(v[i, :, :, ::-1]), (CROP, CROP)) for i in idx]
    return torch.from_numpy(np.stack(crops).astype(np.float32)).permute(3, 0, 1, 2)[None]


@torch.inference_mode()
def lse_scores(
    net: SyncNet,
    wave: np.ndarray,
    sr: int,
    frames: np.ndarray,
    fps: float,
    vshift: int = 15,
    batch: int = 20,
) -> tuple[float, float, int]:
    """(LSE-D, LSE-C, offset in frames) of speech `wave` against face crops `frames`."""
    dev = next(net.parameters()).device
    video = _video_tensor(frames, fps)
    audio = resample(check_wave(wave, sr), sr, AUDIO_RATE)
    cc = torch.from_numpy(mfcc(audio)).float()  # [13, F]
    # 640 samples = one 25 fps frame; windows 0 .. last-1, as syncnet_python
    last = min(video.shape[2], len(audio) // 640) - 5
    if last < 1:
        raise ValueError("LSE needs at least 6 video frames (0.24 s) of overlapping audio/video")
    v_feat, a_feat = [], []
    for i in range(0, last, batch):
        ks = range(i, min(last, i + batch))
        v_feat.append(net.forward_lip(torch.cat([video[:, :, k : k + 5] for k in ks]).to(dev)))
        a_in = torch.stack([cc[None, :, 4 * k : 4 * k + 20] for k in ks])  # [B, 1, 13, 20]
        a_feat.append(net.forward_aud(a_in.to(dev)))
    v, a = torch.cat(v_feat).cpu(), torch.cat(a_feat).cpu()  # [K, 1024]
    a_pad = nn.functional.pad(a, (0, 0, vshift, vshift))
    win = 2 * vshift + 1
    # pairwise_distance (with its eps = 1e-6) as syncnet_python's calc_pdist
    dists = torch.stack(
        [nn.functional.pairwise_distance(v[k][None], a_pad[k : k + win]) for k in range(len(v))]
    )  # [K, 2 * vshift + 1]
    mdist = dists.mean(0)  # [2 * vshift + 1]: D(o) for o = -vshift .. vshift
    minval, minidx = torch.min(mdist, 0)
    return float(minval), float(torch.median(mdist) - minval), int(vshift - minidx)


def lse_metrics(
    net: SyncNet | None,
    wave: np.ndarray,
    sr: int,
    frames: np.ndarray | None,
    fps: float,
    vshift: int = 15,
) -> dict[str, MetricResult]:
    """LSE-D and LSE-C results; "not available" without SyncNet weights or video."""
    if net is None:
        reason = "no SyncNet weights configured (EvalConfig.syncnet_path)"
    elif frames is None:
        reason = "no video frames given"
    else:
        d, c, off = lse_scores(net, wave, sr, frames, fps, vshift)
        return {
            "lse_d": measured("lse_d", d, offset=off),
            "lse_c": measured("lse_c", c, offset=off),
        }
    return {"lse_d": not_available("lse_d", reason), "lse_c": not_available("lse_c", reason)}
