"""Random-initialised models saved to disk the way real checkpoints are, built offline."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = (
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)


def make_tiny_whisper(folder: Path) -> Path:
    """A 2-layer, 32-wide Whisper with a byte-level tokenizer (256 byte symbols, no merges)
    and the default 80-bin feature extractor, saved with save_pretrained into `folder`."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = WhisperTokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    eot, sot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids(SPECIALS[0])
    cfg = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_target_positions=32,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg).eval()
    # the decoder may only emit byte symbols (ids < 256) or end: it must produce some text
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=12,
        suppress_tokens=list(range(eot + 1, len(tok))),
        begin_suppress_tokens=[eot],
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tok).save_pretrained(
        folder
    )
    return folder


def save_random_syncnet(path: Path, seed: int = 0) -> Path:
    """A random-initialised SyncNet state dict (with BatchNorm statistics that are not the
    defaults) written with torch.save, like syncnet_v2.model."""
    from dubforge.eval.syncnet import SyncNet

    torch.manual_seed(seed)
    net = SyncNet()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), path)
    return path
