"""Codec tokenization on tiny random codecs saved and loaded offline, and log-mel features."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dubforge.ingest.tokenize import CodecTokenizer
from tests.ingest.codec_model import make_tiny_codec


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No hub access in these tests. huggingface_hub reads HF_HUB_OFFLINE once at import, so
    the constant is patched too in case another test imported it first."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as a Ray actor with num_cpus=1 gets (OMP_NUM_THREADS=1): on a busy
    2-core box, 2 threads made a 2 s tiny-EnCodec encode 6-20x slower (12 ms -> 73-337 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _noise(n: int, seed: int = 0, level: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * level).astype(np.float32)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    def make(kind: str):
        return make_tiny_codec(tmp_path_factory.mktemp(kind) / kind, kind)

    return make


@pytest.fixture(scope="module")
def encodec(codec_dir) -> CodecTokenizer:
    return CodecTokenizer(str(codec_dir("encodec")), bandwidth=6.0)


def _mismatched_frames(single: np.ndarray, batched: np.ndarray) -> int:
    assert single.shape == batched.shape
    return int((single != batched).any(axis=0).sum())


# --- EnCodec -------------------------------------------------------------------------------


def test_encodec_rates(encodec):
    assert encodec.codec_name == "encodec"
    assert encodec.sample_rate == 24000
    assert encodec.frame_rate == 75
    assert encodec.frame_rate % 25 == 0  # 3 code frames per 25 fps video frame
    assert encodec.n_q == 8  # 6 kbps / (75 Hz * 10 bits)


def test_encodec_codes_for_two_seconds(encodec):
    codes = encodec.encode(_noise(2 * 24000))
    assert codes.dtype == np.int16
    assert codes.shape == (8, 150)
    assert len(np.unique(codes)) > 8  # random codebooks: not one code per codebook
    assert all(len(np.unique(row)) > 1 for row in codes)
    assert codes.min() >= 0 and codes.max() < 1024


@pytest.mark.parametrize(("n", "frames"), [(48000, 150), (48001, 151), (47999, 150), (320, 1)])
def test_frames_are_ceil_of_samples_over_hop(encodec, n, frames):
    assert encodec.encode(_noise(n)).shape == (8, frames)


def test_encodec_batch_matches_single(encodec):
    waves = [_noise(48000, 1), _noise(31207, 2), _noise(12001, 3)]
    batched = encodec.encode_batch(waves)
    # causal codec: padding is invisible; allow a rare near-tie flipped by batched rounding
    for w, b in zip(waves, batched, strict=True):
        single = encodec.encode(w)
        assert _mismatched_frames(single, b) <= 0.03 * single.shape[1]


def _ragged(waves: list[np.ndarray]) -> np.ndarray:
    """A column as Ray Data hands rows of different lengths: an object array of arrays."""
    col = np.empty(len(waves), dtype=object)
    col[:] = waves
    return col


def test_call_adds_codes_columns(encodec):
    speech = [_noise(24000, 4), _noise(30000, 5)]
    background = [_noise(24000, 6), _noise(30000, 7)]
    batch = {"key": np.array(["a/0", "a/1"]), "speech": _ragged(speech)}
    batch["background"] = _ragged(background)
    out = encodec(batch)
    assert list(out["key"]) == ["a/0", "a/1"]
    for stem, waves in (("speech", speech), ("background", background)):
        col = out[f"{stem}_codes"]
        assert len(col) == 2
        assert [c.shape for c in col] == [(8, 75), (8, 94)]  # ceil(30000 / 320) = 94
        assert all(c.dtype == np.int16 for c in col)
        assert _mismatched_frames(encodec.encode(waves[0]), col[0]) <= 2  # near-ties, see above


def test_call_takes_equal_length_rows_as_one_array(codec_dir):
    # rows of one length arrive from Ray Data as a single [b, n] array
    tok = CodecTokenizer(str(codec_dir("encodec")), bandwidth=6.0, stems=("speech",))
    out = tok({"speech": np.stack([_noise(24000, 4), _noise(24000, 5)])})
    assert [c.shape for c in out["speech_codes"]] == [(8, 75), (8, 75)]
    assert "background_codes" not in out


def test_call_names_a_missing_stem(encodec):
    with pytest.raises(ValueError, match="'background'.*stems="):
        encodec({"speech": _ragged([_noise(24000)])})


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 4800), np.float32), np.zeros(4800, np.int16), np.zeros(0, np.float32)]
)
def test_bad_waves_are_refused(encodec, bad):
    with pytest.raises(ValueError, match="1-D float waveform"):
        encodec.encode(bad)


def test_bandwidth_none_keeps_every_codebook(codec_dir):
    tok = CodecTokenizer(str(codec_dir("encodec")))
    assert tok.n_q == 32
    assert tok.encode(_noise(24000)).shape == (32, 75)


def test_bandwidth_must_be_one_of_the_codecs(codec_dir):
    with pytest.raises(ValueError, match="bandwidth 5.0 kbps"):
        CodecTokenizer(str(codec_dir("encodec")), bandwidth=5.0)


# --- loading ---------------------------------------------------------------------------------


def test_hub_name_needs_a_saved_folder():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    # an id that is surely in no local cache: the load must fail, not download
    with pytest.raises(RuntimeError, match="save_pretrained"):
        CodecTokenizer("dubforge-tests/encodec-not-saved-locally")


def test_unsupported_model_type(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'bert'.*encodec, dac, mimi"):
        CodecTokenizer(str(tmp_path))


# --- Mimi and DAC ----------------------------------------------------------------------------


def test_mimi(codec_dir):
    tok = CodecTokenizer(str(codec_dir("mimi")))
    assert tok.codec_name == "mimi"
    assert (tok.sample_rate, tok.frame_rate, tok.n_q) == (24000, 12.5, 8)
    waves = [_noise(48000, 8), _noise(30001, 9)]
    single = [tok.encode(w) for w in waves]
    assert [c.shape for c in single] == [(8, 25), (8, 16)]  # ceil(30001 / 1920) = 16
    assert len(np.unique(single[0])) > 8
    for s, b in zip(single, tok.encode_batch(waves), strict=True):
        assert _mismatched_frames(s, b) <= 0.05 * s.shape[1]


def test_dac(codec_dir):
    tok = CodecTokenizer(str(codec_dir("dac")))
    assert tok.codec_name == "dac"
    assert (tok.sample_rate, tok.frame_rate, tok.n_q) == (16000, 31.25, 4)
    waves = [_noise(32000, 10), _noise(20807, 11)]
    single = [tok.encode(w) for w in waves]
    assert [c.shape for c in single] == [(4, 63), (4, 41)]  # 2 s = 62.5 hops -> 63
    assert len(np.unique(single[0])) > 4
    # DAC looks ahead, so only the last frames of the shorter wave may see the batch padding
    for s, b in zip(single, tok.encode_batch(waves), strict=True):
        np.testing.assert_array_equal(s[:, :-2], b[:, :-2])
