"""Acoustic spaces: what the DiT generates, and how it becomes a waveform.

A space turns a clip record's stored arrays for a stem into continuous latents [n, c] at its
frame rate, and generated latents back into audio. Chosen by short name (`SPACES`):
- "mel": the record's log-mel in a named `MelProfile` (dubforge.schema; "vocos_24k" = 24 kHz,
  hop 256, 100 bins, 93.75 frames/s; "hifigan_22k" = 22.05 kHz, hop 256, 80 bins, 86.13
  frames/s). Waveforms come from the configured vocoder (`vocoders.VocoderRef`: kind + local
  path), which must read that profile; with none configured, Griffin-Lim stands in and
  `fallback` is True, so callers flag what it produced.
- "codec": codes from a transformers EnCodec or DAC checkpoint folder (`save_pretrained`),
  embedded as the sum of their codebook vectors through the codec's own frozen quantizer
  (`quantizer.decode` / `from_codes`); generated latents go through the codec's decoder. The
  latents are divided by `latent_scale` (default: their RMS under uniformly random codes, a
  data-free estimate) so the flow sees roughly unit-scale targets.
A discrete-token space (DiFlowDubber) will register here under its own name.

Video (25 fps) meets latents at `video_ratio` latent frames per video frame: exact repetition
when it is an integer (EnCodec 75 Hz: 3), interpolation otherwise (mel: 3.75, 3.45; DESIGN.md
"Contracts between stages"; conditions.upsample_frames).

Shape key: n = latent frames, c = latent width, q = codebooks, b = batch, m = mel bins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dubforge.model.vocoders import Vocoder, VocoderRef, check_vocoder, load_vocoder
from dubforge.schema import FPS, STEM_PREFIX, mel_profile

# the mel profile a mel space reads when none is named: F5-TTS's, which Vocos decodes
DEFAULT_MEL_PROFILE = "vocos_24k"
GRIFFIN_LIM_ITERS = 32


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
    fallback: bool = False  # True: decode() is a stand-in (Griffin-Lim); flag its outputs

    @property
    def video_ratio(self) -> float:
        """Latent frames per 25 fps video frame (3.0 for EnCodec 75 Hz, 3.75 for vocos_24k)."""
        return self.frame_rate / FPS

    def frames_per_video_frame(self, fps: int = FPS) -> int:
        """Latent frames per video frame when that is a whole number (lips then align by
        exact repetition); raises ValueError otherwise (use `video_ratio`)."""
        ratio = self.frame_rate / fps
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ValueError(
                f"{self.name} space runs at {self.frame_rate:g} Hz, not an integer multiple of "
                f"{fps} fps video ({ratio:g} latent frames per video frame); lips align to it "
                "by interpolation: use video_ratio"
            )
        return round(ratio)

    def has(self, arrays: dict[str, np.ndarray], stem: str) -> bool:
        """Whether the record's arrays hold what this space reads for `stem`."""
        return self.array_key(stem) in arrays

    def check_profile(self, name: str | None) -> None:
        """Refuse a record whose mel profile this space cannot read; codes read under any."""
        return None

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
        """What a checkpoint's codec.json stores to rebuild this space: name, rates, latent
        width and video ratio (mel: + profile and vocoder; codec: + path, codebooks, scale)."""
        return {
            "space": self.name,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "latent_dim": self.latent_dim,
            "video_ratio": self.video_ratio,
        }

    def _missing(self, arrays: dict[str, np.ndarray], stem: str, fix: str = "") -> ValueError:
        return ValueError(
            f"record has no {self.array_key(stem)!r} array (has {sorted(arrays)}); the "
            f"{self.name} space needs it for the {stem} stem{fix}"
        )


class MelSpace(AcousticSpace):
    """The stored log-mel of one profile at its frame rate; decoded by the configured vocoder
    (loaded on first use), else by the flagged Griffin-Lim fallback."""

    name = "mel"

    def __init__(
        self,
        profile: str = DEFAULT_MEL_PROFILE,
        *,
        vocoder: VocoderRef | None = None,
        griffin_lim_iters: int = GRIFFIN_LIM_ITERS,
        device: str = "cpu",
    ) -> None:
        self.profile = mel_profile(profile)
        if vocoder is not None:
            check_vocoder(vocoder, self.profile)  # reads its config only: cheap, fails early
        self.vocoder_ref = vocoder
        self.griffin_lim_iters = griffin_lim_iters
        self.device = device
        self.latent_dim = self.profile.n_mels
        self.frame_rate = self.profile.frame_rate
        self.sample_rate = self.profile.sample_rate
        self.fallback = vocoder is None or vocoder.kind == "griffin_lim"
        self._vocoder: Vocoder | None = None

    @property
    def vocoder(self) -> Vocoder:
        """The loaded vocoder (weights read on first access)."""
        if self._vocoder is None:
            self._vocoder = load_vocoder(
                self.vocoder_ref,
                self.profile,
                griffin_lim_iters=self.griffin_lim_iters,
                device=self.device,
            )
        return self._vocoder

    def array_key(self, stem: str) -> str:
        return f"{_prefix(stem)}.mel"

    def check_profile(self, name: str | None) -> None:
        """Raise ValueError unless a record's `mel_profile` is this space's profile."""
        if name != self.profile.name:
            raise ValueError(
                f"the record's mel is in profile {name!r}, this mel space reads "
                f"{self.profile.name!r}: set the space's mel profile to {name!r} (with a "
                f"vocoder for it) or re-ingest with codec.mel: {self.profile.name}"
            )

    def latents(self, arrays: dict[str, np.ndarray], stem: str) -> Tensor:
        if not self.has(arrays, stem):
            raise self._missing(arrays, stem, f"; run ingest with codec.mel: {self.profile.name}")
        mel = np.asarray(arrays[self.array_key(stem)])  # mel: [m, n]
        if mel.ndim != 2 or mel.shape[0] != self.latent_dim:
            raise ValueError(
                f"{self.array_key(stem)} has shape {mel.shape}; profile {self.profile.name!r} "
                f"has {self.latent_dim} bins, so [{self.latent_dim}, n] was expected"
            )
        return torch.from_numpy(mel.astype(np.float32).T.copy())  # [n, m]

    def decode(self, latents: Tensor) -> Tensor:
        return self.vocoder(latents.float().transpose(1, 2))  # mel: [b, m, n]

    def reference(self) -> dict[str, Any]:
        return {
            **super().reference(),
            "mel_profile": self.profile.name,
            "vocoder": self.vocoder_ref.to_dict() if self.vocoder_ref else None,
        }


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
            **super().reference(),
            "path": self.path,
            "codec_name": self.kind,
            "codebooks": self.codebooks,
            "latent_scale": self.latent_scale,
        }

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
    mel_profile: str = DEFAULT_MEL_PROFILE,
    vocoder: str | None = None,
    codebooks: int | None = None,
    latent_scale: float | None = None,
    griffin_lim_iters: int = GRIFFIN_LIM_ITERS,
    device: str = "cpu",
) -> AcousticSpace:
    """An acoustic space by short name. "mel": the log-mel of `mel_profile`, decoded by the
    vocoder of kind `vocoder` ("hifigan", "vocos", "bigvgan", "griffin_lim") at `path`, or by
    the flagged Griffin-Lim fallback when `vocoder` is None. "codec": path = transformers
    EnCodec/DAC folder; `codebooks` = codes per frame the records hold, None = all it has."""
    if name == "mel":
        if path and not vocoder:
            raise ValueError(
                f"the mel space got vocoder path {path!r} without its kind: set the vocoder "
                "kind (hifigan, vocos or bigvgan) as well"
            )
        ref = VocoderRef(vocoder, path) if vocoder else None
        return MelSpace(
            mel_profile, vocoder=ref, griffin_lim_iters=griffin_lim_iters, device=device
        )
    if name == "codec":
        if not path:
            raise ValueError("the codec space needs space.path: a save_pretrained codec folder")
        return CodecSpace(path, codebooks, latent_scale, device)
    raise ValueError(f"unknown acoustic space {name!r}; choose from {sorted(SPACES)}")
