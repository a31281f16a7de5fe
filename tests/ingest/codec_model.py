"""Tiny random-initialised audio codecs saved like real checkpoints, for tokenizer tests.

Each keeps its codec's default sampling rate and hop (EnCodec 24 kHz / 75 Hz, Mimi 24 kHz /
12.5 Hz, DAC 16 kHz / 31.25 Hz) and shrinks only the channel and hidden sizes, so frame counts
are those of the real model while encoding 2 s takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DacConfig, DacModel, EncodecConfig, EncodecModel, MimiConfig, MimiModel


def _encodec() -> EncodecModel:
    # 32 codebooks of 1024 at 75 Hz, as the 24 kHz checkpoint: 6 kbps -> 8 codebooks
    cfg = EncodecConfig(hidden_size=16, num_filters=4, num_lstm_layers=1)
    return EncodecModel(cfg)


def _mimi() -> MimiModel:
    cfg = MimiConfig(
        hidden_size=32, num_filters=4, num_hidden_layers=1, intermediate_size=64,
        num_attention_heads=2, num_key_value_heads=2, codebook_dim=16,
        vector_quantization_hidden_dimension=16, num_quantizers=8, upsample_groups=32,
    )  # fmt: skip
    return MimiModel(cfg)


def _dac() -> DacModel:
    cfg = DacConfig(encoder_hidden_size=4, decoder_hidden_size=16, n_codebooks=4)
    return DacModel(cfg)


BUILDERS = {"encodec": _encodec, "mimi": _mimi, "dac": _dac}

# Buffers/weights holding codebook entries: EnCodec `...codebook.embed` (+ `embed_avg`), Mimi
# `...codebook.embed_sum` (divided by `cluster_usage`, which is 1), DAC `...codebook.weight`.
_CODEBOOK_KEYS = ("codebook.embed", "codebook.weight")


def _fill_codebooks(model: torch.nn.Module, seed: int) -> int:
    """Random codebook entries: at init EnCodec's and Mimi's are zeros, so every code is 0."""
    gen = torch.Generator().manual_seed(seed)
    state = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    filled = 0
    with torch.no_grad():
        for name, tensor in state.items():
            if any(k in name for k in _CODEBOOK_KEYS):
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
                filled += 1
    return filled


def _fit_encodec_codebooks(model: EncodecModel, gen: torch.Generator) -> None:
    """Fit EnCodec's codebooks to what its encoder emits. A random-init encoder's output is
    nearly constant in time: per-channel offsets ~50x its variation. Noise codebooks around 0
    would then map every frame to one entry; entries around the offset work but leave more
    nearest-entry choices to float32 rounding (batched vs single encodes differed in 145 rather
    than 50 of 69760 codes at 24 kbps). So the last conv's bias removes the offset and the
    entries get the spread seen over time."""
    probe = torch.randn(1, 1, model.config.sampling_rate, generator=gen) * 0.1
    with torch.no_grad():
        emb = model.encoder(probe)[0]  # emb: [d, t]
        model.encoder.layers[-1].conv.bias -= emb.mean(-1)
        std = emb.std(-1)  # [d]
        for layer in model.quantizer.layers:
            entries = torch.randn(layer.codebook.embed.shape, generator=gen) * std  # [k, d]
            layer.codebook.embed.copy_(entries)
            layer.codebook.embed_avg.copy_(entries)


def make_tiny_codec(path: Path, kind: str = "encodec", seed: int = 0) -> Path:
    """Build a tiny `kind` codec ("encodec", "mimi" or "dac") with random codebooks, save it with
    save_pretrained into `path` and return `path`."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown codec kind {kind!r}; choose from {sorted(BUILDERS)}")
    torch.manual_seed(seed)
    model = BUILDERS[kind]().eval()
    if _fill_codebooks(model, seed) == 0:
        raise RuntimeError(f"no codebook tensors found in the {kind} model: update _CODEBOOK_KEYS")
    if kind == "encodec":
        _fit_encodec_codebooks(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(path)
    return path
