"""Audio-codec tokenization (EnCodec, DAC, Mimi from transformers).

Frame-count convention (n = samples at the codec's rate): T = ceil(n / hop). The input is
zero-padded on the right to a whole number of hops, so a partial last hop becomes one more frame
and no audio is dropped. EnCodec 24 kHz has hop 320 (75 Hz): 2 s = 48000 samples -> exactly 150
frames. Mimi has hop 1920 (12.5 Hz). Log-mel features are computed in a vocoder's profile by
`dubforge.mel` (the Tokenize stage resamples to the profile's rate first).

Shape key: n = samples, b = batch, n_q = codebooks used, t = codec frames.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

SUPPORTED_CODECS = ("encodec", "dac", "mimi")
INT16_MAX = int(np.iinfo(np.int16).max)


def _codec_classes() -> dict[str, Any]:
    # imported here, not at module top: transformers takes ~2 s to import, and the pipeline
    # driver imports this module only to hand the class to Ray
    from transformers import DacModel, EncodecModel, MimiModel

    return {"encodec": EncodecModel, "dac": DacModel, "mimi": MimiModel}


def _read_config(name_or_path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as e:
        raise RuntimeError(
            f"cannot load codec {name_or_path!r}: these machines have no hub access, so the model "
            "must be saved locally (model.save_pretrained(folder) where the hub is reachable) and "
            f"that folder configured as the codec path ({type(e).__name__}: {e})"
        ) from e


def _hop_length(cfg: Any) -> int:
    """Input samples per code frame, from the encoder's strides."""
    if cfg.model_type == "mimi":
        return int(cfg.frame_size)  # SEANet strides x the 2x downsampling after the transformer
    return int(cfg.hop_length)  # EnCodec, DAC: product of the conv strides


def _check_config(cfg: Any, name_or_path: str) -> None:
    if cfg.model_type not in SUPPORTED_CODECS:
        raise ValueError(
            f"codec {name_or_path!r} has model_type {cfg.model_type!r}; "
            f"supported: {', '.join(SUPPORTED_CODECS)}"
        )
    if getattr(cfg, "audio_channels", 1) != 1:
        raise ValueError(
            f"codec {name_or_path!r} takes {cfg.audio_channels} channels; use a mono one"
        )
    if cfg.model_type == "encodec" and (cfg.chunk_length_s is not None or cfg.normalize):
        # chunked, normalised encoding (the 48 kHz model) returns per-chunk scales we'd drop
        raise ValueError(
            f"codec {name_or_path!r} is a chunked/normalised EnCodec (48 kHz); use a mono "
            "unchunked one such as facebook/encodec_24khz"
        )
    if cfg.codebook_size - 1 > INT16_MAX:
        raise ValueError(
            f"codec {name_or_path!r} has codebook_size {cfg.codebook_size}: codes do not fit "
            "int16; choose a codec with at most 32768 entries per codebook"
        )


def _num_quantizers(cfg: Any, frame_rate: float, bandwidth: float | None) -> int:
    """Codebooks used at `bandwidth` kbps; None -> every codebook the checkpoint has."""
    n_max = int(cfg.n_codebooks if cfg.model_type == "dac" else cfg.num_quantizers)
    if bandwidth is None:
        return n_max
    if cfg.model_type == "encodec" and bandwidth not in cfg.target_bandwidths:
        raise ValueError(
            f"EnCodec bandwidth {bandwidth} kbps is not one of {list(cfg.target_bandwidths)}"
        )
    kbps_per_q = frame_rate * math.log2(cfg.codebook_size) / 1000
    n_q = int(bandwidth / kbps_per_q + 1e-9)
    if not 1 <= n_q <= n_max:
        raise ValueError(
            f"bandwidth {bandwidth} kbps gives {n_q} codebooks for this {cfg.model_type} codec; "
            f"choose between {kbps_per_q:g} and {n_max * kbps_per_q:g} kbps, or None for all"
        )
    return n_q


class CodecTokenizer:
    """Mono waveforms -> int16 codec codes [n_q, t], with t = ceil(n / hop).

    Loads the codec once (meant for a Ray Data actor pool). `name_or_path` is a folder written
    by `save_pretrained`; hub names only work where the hub is reachable.
    `bandwidth` (kbps) picks how many codebooks are kept (EnCodec 24 kHz at 6.0 -> 8); None
    keeps all of them. As a batch stage it adds f"{stem}_codes" for every column in `stems`.
    """

    def __init__(
        self,
        name_or_path: str,
        device: str = "cpu",
        bandwidth: float | None = None,
        stems: tuple[str, ...] = ("speech", "background"),
    ) -> None:
        name_or_path = str(name_or_path)
        cfg = _read_config(name_or_path)
        _check_config(cfg, name_or_path)
        self.config = cfg
        self.device = torch.device(device)
        self.stems = tuple(stems)
        self.hop = _hop_length(cfg)
        self.n_q = _num_quantizers(cfg, self.frame_rate, bandwidth)
        self.bandwidth = bandwidth
        model_cls = _codec_classes()[cfg.model_type]
        self.model = model_cls.from_pretrained(name_or_path).to(self.device).eval()
        # save_random_codec's flag: records made with it must say their codes mean nothing
        self.random_weights = bool(getattr(cfg, "dubforge_random_weights", False))
        if self.random_weights:
            log.warning("codec %s has RANDOM weights: codes carry no information", name_or_path)

    @property
    def codec_name(self) -> str:
        """The checkpoint's model_type: "encodec", "dac" or "mimi"."""
        return str(self.config.model_type)

    @property
    def sample_rate(self) -> int:
        """The rate (Hz) input waves must already have."""
        return int(self.config.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Code frames per second: sample_rate / hop (EnCodec 24 kHz 75.0, Mimi 12.5)."""
        return self.sample_rate / self.hop

    def num_frames(self, n: int) -> int:
        """Code frames for n samples: ceil(n / hop)."""
        return -(-n // self.hop)

    def _as_wave(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.floating):
            raise ValueError(
                f"codec input must be a non-empty 1-D float waveform at {self.sample_rate} Hz, "
                f"got shape {wave.shape} dtype {wave.dtype}; decode mono float32 audio first"
            )
        return wave.astype(np.float32, copy=False)

    def _run_codec(self, x: torch.Tensor) -> torch.Tensor:
        """x: [b, 1, n] with n a multiple of hop -> codes [b, n_q, t]."""
        if self.codec_name == "encodec":
            bw = self.bandwidth or max(self.config.target_bandwidths)  # max = every codebook
            return self.model.encode(x, bandwidth=bw).audio_codes[0]  # [chunks=1, b, n_q, t]
        if self.codec_name == "dac":
            return self.model.encode(x, n_quantizers=self.n_q).audio_codes
        return self.model.encode(x, num_quantizers=self.n_q).audio_codes

    @torch.inference_mode()
    def encode_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Encode waves of any lengths together: each is zero-padded to the longest (in whole
        hops) and its codes cut back to its own ceil(n / hop) frames.

        Edge effects against encoding one by one: EnCodec and Mimi are causal, so a wave's own
        frames never see the padding, but batched kernels round differently (~1e-7), which can
        flip a near-tie between codebook entries at a rare frame (and the residual codebooks
        after it). DAC's convolutions look ahead, so with non-zero biases the last frame(s) of a
        shorter wave can differ; group waves of similar length to keep that rare."""
        waves = [self._as_wave(w) for w in waves]
        if not waves:
            return []
        frames = [self.num_frames(len(w)) for w in waves]
        x = torch.zeros(len(waves), 1, max(frames) * self.hop)  # x: [b, 1, n_max]
        for i, w in enumerate(waves):
            x[i, 0, : len(w)] = torch.from_numpy(w)
        codes = self._run_codec(x.to(self.device)).cpu()  # codes: [b, n_q, t_max]
        if tuple(codes.shape[1:]) != (self.n_q, max(frames)):
            raise RuntimeError(
                f"{self.codec_name} gave codes {tuple(codes.shape[1:])} for {x.shape[-1]} "
                f"samples, expected ({self.n_q}, {max(frames)}) with hop {self.hop}: the hop "
                "derived from this checkpoint's config is wrong; fix _hop_length"
            )
        if int(codes.min()) < 0 or int(codes.max()) > INT16_MAX:
            raise RuntimeError(
                f"{self.codec_name} codes span {int(codes.min())}..{int(codes.max())}, outside "
                "int16; this checkpoint's codebooks are too large for int16 storage"
            )
        return [c[:, :t].numpy().astype(np.int16) for c, t in zip(codes, frames, strict=True)]

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """Mono float32 [n] at `sample_rate` -> int16 codes [n_q, ceil(n / hop)]."""
        return self.encode_batch([wave])[0]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data batch stage: for each stem column (rows: 1-D float32 waves at
        `sample_rate`) add f"{stem}_codes" (rows: int16 [n_q, t])."""
        for stem in self.stems:
            if stem not in batch:
                raise ValueError(
                    f"batch has no {stem!r} column (columns: {sorted(batch)}); "
                    "pass the stem columns present as CodecTokenizer(stems=...)"
                )
            codes = self.encode_batch(list(batch[stem]))
            # an object array of ragged arrays: Ray stores it as a variable-shaped tensor column
            column = np.empty(len(codes), dtype=object)
            column[:] = codes
            batch[f"{stem}_codes"] = column
        return batch


def save_random_codec(folder: str | Path, kind: str = "encodec", seed: int = 0) -> Path:
    """Write a codec with its model's default (full-size) architecture and RANDOM weights to
    `folder`, flagged `dubforge_random_weights` in its config so every record made with it says
    so. For demos and speed measurements where no pretrained codec can be fetched: its codes
    carry no information about the audio."""
    from transformers import DacConfig, EncodecConfig, MimiConfig

    configs = {"encodec": EncodecConfig, "dac": DacConfig, "mimi": MimiConfig}
    if kind not in configs:
        raise ValueError(f"codec kind {kind!r}: choose one of {sorted(configs)}")
    torch.manual_seed(seed)
    cfg = configs[kind]()
    cfg.dubforge_random_weights = True
    model = _codec_classes()[kind](cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # EnCodec's and Mimi's codebooks start as zeros: every code would be 0
        for name, buf in [*model.named_buffers(), *model.named_parameters()]:
            if "codebook.embed" in name or "codebook.weight" in name:
                buf.copy_(torch.randn(buf.shape, generator=gen))
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder
