"""WER: the normaliser, word-level edit distance, and the ASR plug-in (a tiny local Whisper)."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.asr import WhisperTranscriber, build_asr
from dubforge.eval.wer import edit_distance, normalize_text, wer_metric, word_error_rate


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("Don’t stop—now", ["don't", "stop", "now"]),
        ("'Quoted' well-known a/b", ["quoted", "well", "known", "a", "b"]),
        ("  STRASSE  Straße ", ["strasse", "strasse"]),
        ("Ünïcode café 42", ["ünïcode", "café", "42"]),
        ("...", []),
    ],
)
def test_normaliser(text, words):
    assert normalize_text(text) == words


def test_edit_distance_counts_substitutions_deletions_insertions():
    ref = "a b c d".split()
    assert edit_distance(ref, ref) == 0
    assert edit_distance(ref, "a x c d".split()) == 1  # substitution
    assert edit_distance(ref, "a c d".split()) == 1  # deletion
    assert edit_distance(ref, "a b b c d".split()) == 1  # insertion
    assert edit_distance(ref, []) == 4 and edit_distance([], ref) == 4
    assert edit_distance("k i t t e n".split(), "s i t t i n g".split()) == 3


def test_wer_values():
    ref = "The captain left the lantern."
    assert word_error_rate(ref, "the Captain left the lantern") == 0.0
    assert word_error_rate(ref, "the captain lost the lantern") == pytest.approx(1 / 5)
    assert word_error_rate(ref, "a pilot found no lamp at all today") > 1.0  # insertions
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("?!", "anything")


def test_wer_metric_keeps_the_transcript():
    assert wer_metric("a b", "a b").value == 0.0
    r = wer_metric("A b!", "a c")
    assert r.value == 0.5 and r.details == {"hypothesis": "A b!", "ref_words": 2}


def test_whisper_loads_from_a_local_folder_and_transcribes(whisper_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail loudly
    asr = build_asr(whisper_dir)
    assert isinstance(asr, WhisperTranscriber)
    wave = 0.1 * np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    text = asr(wave, 22050)
    assert isinstance(text, str) and 0 < len(text) <= 12  # random weights: any short string
    assert asr(wave, 22050) == text  # greedy decoding is deterministic


def test_whisper_path_errors(tmp_path, whisper_dir):
    assert build_asr(None) is None
    with pytest.raises(ValueError, match="asr_path"):
        WhisperTranscriber(tmp_path / "missing")
    asr = WhisperTranscriber(whisper_dir)
    with pytest.raises(ValueError, match="30 s"):
        asr(np.zeros(16000 * 31, np.float32), 16000)
