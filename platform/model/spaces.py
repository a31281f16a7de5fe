"""Acoustic spaces: what the DiT generates, and how it becomes a waveform.

A space turns a clip record's stored arrays for a stem into continuous latents [n, c] at its
frame rate, and generated latents back into audio. Chosen by short name (`SPACES`):
- "mel": the record's 100-bin log-mel (24 kHz, hop 240 = 100 frames/s). Waveforms come from a
  vocoder given by path, else Griffin-Lim. Vocoder contract: a TorchScript file
  (`torch.jit.save`) whose forward maps log-mel [b, 100, n] (float32, the ingest's
  log(clamp(mel magnitude, 1e-5)) at hop 240) to waves [b, samples] or [b, 1, samples] at
  24 kHz. A vocoder trained on hop-256 mels (Vocos, F5-TTS) needs retraining for hop 240.
- "codec": codes from a transformers EnCodec or DAC checkpoint folder (`save_pretrained`),
  embedded as the sum of their codebook vectors through the codec's own frozen quantizer
  (`quantizer.decode` / `from_codes`); generated latents go through the codec's decoder. The
  latents are divided by `latent_scale` (default: their RMS under uniformly random codes, a
  data-free estimate) so the flow sees roughly unit-scale targets.
A discrete-token space (DiFlowDubber) will register here under its own name.

Shape key: n = latent frames, c = latent width, q = codebooks, b = batch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dubforge.ingest.tokenize import MEL_BINS, MEL_HOP, MEL_N_FFT, MEL_SAMPLE_RATE

STEM_PREFIX = {"speech": "speech", "background": "bg"}  # stem -> array key prefix


def _prefix(stem: str) -> str:
    if stem not in STEM_PREFIX:
        raise ValueError(f"unknown stem {stem!r}; use one of {sorted(STEM_PREFIX)}")
    return STEM_PREFIX[stem]


class AcousticSpace(ABC):
    """Latents <-> audio for one acoustic representation."""

    name: str
    latent_dim: int
    frame_rate: float
    sample_rate: int

    def frames_per_video_frame(self, fps: int = 25) -> int:
        """Latent frames per video frame; lips align to latents by repeating this many times."""
        ratio = self.frame_rate / fps
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ValueError(
                f"{self.name} space runs at {self.frame_rate:g} Hz, not an integer multiple of "
                f"{fps} fps video; lips cannot align by repetition. Use EnCodec 24 kHz (75 Hz) "
                "or the 100 Hz mel"
            )
        return round(ratio)

    def has(self, arrays: dict[str, np.ndarray], stem: str) -> bool:
        """Whether the record's arrays hold what this space reads for `stem`."""
        return self.array_key(stem) in arrays

    @abstractmethod
    def array_key(self, stem: str) -> str:
        """The record array this space reads for a stem, e.g. "speech.mel"."""

    @abstractmethod
    def latents(self, arrays: dict[str, np.ndarray], stem: str) -> Tensor:
        """The stem's latents [n, c] (float32) from a record's arrays."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Latents [b, n, c] -> waveforms [b, samples] at `sample_rate`."""

    def reference(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this space (name, path, rates, widths)."""
        return {
            "space": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
            "latent_dim": self.latent_dim, "lip_repeat": self.frames_per_video_frame(),
        }  # fmt: skip

    def _missing(self, arrays: dict[str, np.ndarray], stem: str) -> ValueError:
        return ValueError(
            f"record has no {self.array_key(stem)!r} array (has {sorted(arrays)}); the "
            f"{self.name} space needs it for the {stem} stem"
            + ("; run ingest with codec.mel: true" if self.name == "mel" else "")
        )


class MelSpace(AcousticSpace):
    """The stored 100-bin log-mel at 100 frames/s; vocoder by path, else Griffin-Lim."""

    name = "mel"
    latent_dim = MEL_BINS
    frame_rate = MEL_SAMPLE_RATE / MEL_HOP
    sample_rate = MEL_SAMPLE_RATE

    def __init__(self, vocoder_path: str | None = None, griffin_lim_iters: int = 32) -> None:
        self.vocoder_path = vocoder_path
        self.griffin_lim_iters = griffin_lim_iters
        self._vocoder: Any = None
        self._pinv: Tensor | None = None

    def array_key(self, stem: str) -> str:
        return f"{_prefix(stem)}.mel"

    def latents(self, arrays: dict[str, np.ndarray], stem: str) -> Tensor:
        if not self.has(arrays, stem):
            raise self._missing(arrays, stem)
        mel = np.asarray(arrays[self.array_key(stem)])  # mel: [100, n]
        if mel.ndim != 2 or mel.shape[0] != MEL_BINS:
            raise ValueError(f"{self.array_key(stem)} has shape {mel.shape}, expected [100, n]")
        return torch.from_numpy(mel.astype(np.float32).T.copy())  # [n, 100]

    def decode(self, latents: Tensor) -> Tensor:
        mel = latents.float().transpose(1, 2)  # mel: [b, 100, n]
        if self.vocoder_path:
            if self._vocoder is None:
                self._vocoder = torch.jit.load(self.vocoder_path, map_location="cpu").eval()
            with torch.no_grad():
                wave = self._vocoder(mel.cpu())
            return wave.reshape(wave.shape[0], -1)
        return self._griffin_lim(mel.cpu())

    def reference(self) -> dict[str, Any]:
        return {**super().reference(), "path": self.vocoder_path}

    def _griffin_lim(self, mel: Tensor) -> Tensor:
        """Log-mel magnitude -> linear magnitude via the filterbank's pseudo-inverse, then
        Griffin-Lim (phase from seeded noise, so the same latents give the same wave)."""
        if self._pinv is None:
            # the ingest's own filterbank, so this inverts exactly what wrote the mel
            from dubforge.ingest.tokenize import _mel_filters

            self._pinv = torch.linalg.pinv(_mel_filters(MEL_SAMPLE_RATE, MEL_N_FFT, MEL_BINS))
        mag = (self._pinv @ mel.exp()).clamp(min=0)  # mag: [b, 513, n]
        # ingest's log_mel drops the frame centred on the clip end; add it back for istft
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        window = torch.hann_window(MEL_N_FFT)
        gen = torch.Generator().manual_seed(0)
        phase = torch.rand(mag.shape, generator=gen) * 2 * math.pi
        n = (mag.shape[-1] - 1) * MEL_HOP
        spec = torch.polar(mag, phase)
        for _ in range(self.griffin_lim_iters):
            wave = torch.istft(spec, MEL_N_FFT, MEL_HOP, MEL_N_FFT, window, length=n)
            est = torch.stft(wave, MEL_N_FFT, MEL_HOP, MEL_N_FFT, window, return_complex=True)
            spec = torch.polar(mag, est.angle())
        return torch.istft(spec, MEL_N_FFT, MEL_HOP, MEL_N_FFT, window, length=n)


class CodecSpace(AcousticSpace):
    """Codec codes -> summed codebook embeddings (the codec's frozen quantizer) -> decoder."""

    name = "codec"

    def __init__(
        self,
        path: str,
        codebooks: int | None = None,
        latent_scale: float | None = None,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoConfig, DacModel, EncodecModel

        try:
            cfg = AutoConfig.from_pretrained(str(path))
        except OSError as e:
            raise RuntimeError(
                f"cannot load codec {path!r}: point space.path at a local folder written by "
                f"save_pretrained (no hub access here) ({type(e).__name__}: {e})"
            ) from e
        classes = {"encodec": EncodecModel, "dac": DacModel}
        if cfg.model_type not in classes:
            raise ValueError(
                f"codec {path!r} is {cfg.model_type!r}; the codec space supports "
                f"{sorted(classes)} (Mimi's 12.5 Hz frames do not align with 25 fps video)"
            )
        self.path = str(path)
        self.kind = cfg.model_type
        self.model = classes[self.kind].from_pretrained(self.path).to(device).eval()
        self.model.requires_grad_(False)
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = self.sample_rate / int(cfg.hop_length)
        self.latent_dim = int(cfg.codebook_dim if self.kind == "encodec" else cfg.hidden_size)
        self.codebook_size = int(cfg.codebook_size)
        quantizer = self.model.quantizer
        n_max = len(quantizer.layers if self.kind == "encodec" else quantizer.quantizers)
        if codebooks is not None and not 1 <= codebooks <= n_max:
            raise ValueError(f"codebooks={codebooks}: codec {path!r} has 1..{n_max} codebooks")
        self.codebooks = codebooks if codebooks is not None else n_max
        self.latent_scale = float(latent_scale) if latent_scale else self._estimate_scale()

    def array_key(self, stem: str) -> str:
        return f"{_prefix(stem)}.codes"

    @torch.no_grad()
    def embed_codes(self, codes: Tensor) -> Tensor:
        """Codes [b, q, n] -> the quantizer's sum of codebook vectors [b, c, n] (unscaled)."""
        codes = codes.long().to(next(self.model.parameters()).device)
        if self.kind == "encodec":
            return self.model.quantizer.decode(codes.transpose(0, 1))  # expects [q, b, n]
        return self.model.quantizer.from_codes(codes)[0]

    def latents(self, arrays: dict[str, np.ndarray], stem: str) -> Tensor:
        if not self.has(arrays, stem):
            raise self._missing(arrays, stem)
        codes = torch.from_numpy(np.asarray(arrays[self.array_key(stem)]).astype(np.int64))
        if codes.ndim != 2 or int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise ValueError(
                f"{self.array_key(stem)} must be codes [q, n] in 0..{self.codebook_size - 1}, "
                f"got shape {tuple(codes.shape)}; was it written with another codec?"
            )
        if codes.shape[0] != self.codebooks:
            raise ValueError(
                f"{self.array_key(stem)} has {codes.shape[0]} codebooks, the space expects "
                f"{self.codebooks}; set space.codebooks to the ingest's count (EnCodec 6 kbps: 8)"
            )
        emb = self.embed_codes(codes[None])[0]  # emb: [c, n]
        return (emb.T / self.latent_scale).float().cpu().contiguous()  # [n, c]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = latents.float().transpose(1, 2) * self.latent_scale  # z: [b, c, n]
        z = z.to(next(self.model.parameters()).device)
        return self.model.decoder(z).reshape(z.shape[0], -1).cpu()

    def reference(self) -> dict[str, Any]:
        return {
            **super().reference(), "path": self.path, "codec_name": self.kind,
            "codebooks": self.codebooks, "latent_scale": self.latent_scale,
        }  # fmt: skip

    def _estimate_scale(self, frames: int = 2048) -> float:
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(0, self.codebook_size, (1, self.codebooks, frames), generator=gen)
        rms = float(self.embed_codes(codes).float().pow(2).mean().sqrt())
        if not rms > 0:
            raise RuntimeError(
                f"codec {self.path!r} has all-zero codebooks (an untrained checkpoint?); give "
                "space.latent_scale explicitly or use a trained codec"
            )
        return rms


SPACES: dict[str, type[AcousticSpace]] = {"mel": MelSpace, "codec": CodecSpace}


def build_space(
    name: str,
    path: str | None = None,
    *,
    codebooks: int | None = None,
    latent_scale: float | None = None,
    griffin_lim_iters: int = 32,
    device: str = "cpu",
) -> AcousticSpace:
    """An acoustic space by short name: "mel" (path = optional TorchScript vocoder) or "codec"
    (path = transformers EnCodec/DAC folder; `codebooks` = codes per frame the records hold,
    None = all the codec has)."""
    if name == "mel":
        return MelSpace(path, griffin_lim_iters)
    if name == "codec":
        if not path:
            raise ValueError("the codec space needs space.path: a save_pretrained codec folder")
        return CodecSpace(path, codebooks, latent_scale, device)
    raise ValueError(f"unknown acoustic space {name!r}; choose from {sorted(SPACES)}")
