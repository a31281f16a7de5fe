"""WER: Whisper's normaliser, jiwer as the oracle, and the ASR plug-in (a tiny local Whisper)."""

from __future__ import annotations

import json

import jiwer
import numpy as np
import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from dubforge.eval.asr import WhisperTranscriber, build_asr
from dubforge.eval.wer import load_spelling_mapping, normalize_text, wer_metric, word_error_rate


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("Don’t stop—now", ["do", "not", "stop", "now"]),
        ("'Quoted' well-known a/b", ["quoted", "well", "known", "a", "b"]),
        ("Mr. Smith won't pay twenty-five dollars.", "mister smith will not pay $25".split()),
        ("Uh, it's [music] (laughs) 3,000 metres", ["it", "is", "3000", "metres"]),
        ("Ünïcode café", ["unicode", "cafe"]),
        ("?!", []),
    ],
)
def test_whisper_normaliser(text, words):
    assert normalize_text(text) == words


PAIRS = [
    ("The captain left the lantern.", "the captain lost the lantern"),
    ("Mr. Jones doesn't know 25 people.", "mister jones does not know twenty five people"),
    ("I'll be there at 3:30, won't I?", "i will be there at three thirty will not i"),
    ("We can't stop—now!", "we cannot stop now now"),
    ("She said: “It's the colour of rain.”", "she said its the color of the rain"),
    ("Nobody believed that the baker watched the radio.", ""),
]


@pytest.mark.parametrize(("reference", "hypothesis"), PAIRS)
def test_wer_is_jiwer_after_the_whisper_normaliser(reference, hypothesis):
    norm = EnglishTextNormalizer({})
    expected = jiwer.wer(norm(reference), norm(hypothesis) or "")
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected, abs=1e-12)


def test_typographic_apostrophes_read_as_ascii_ones():
    assert (
        normalize_text("Don’t you’ll")
        == normalize_text("don't you'll")
        == "do not you will".split()
    )
    assert word_error_rate("I’m here", "i am here") == 0.0


def test_the_normaliser_changes_the_score():
    ref, hyp = "Mr. Jones doesn't know 25 people.", "mister jones does not know twenty five people"
    assert word_error_rate(ref, hyp) == 0.0
    # the same pair with only case and punctuation removed: titles, contractions and numbers
    # would all count as errors
    assert jiwer.wer("mr jones doesn't know 25 people", hyp) > 0.5
    assert word_error_rate("I'll go", "I will go") == 0.0


def test_wer_values():
    ref = "The captain left the lantern."
    assert word_error_rate(ref, "the Captain left the lantern") == 0.0
    assert word_error_rate(ref, "the captain lost the lantern") == pytest.approx(1 / 5)
    assert word_error_rate(ref, "the captain left the lantern at all") == pytest.approx(2 / 5)
    assert word_error_rate(ref, "a pilot found no lamp at all today") > 1.0  # insertions
    assert word_error_rate(ref, "") == 1.0
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("?!", "anything")


def test_wer_metric_keeps_the_transcript():
    assert wer_metric("a b", "a b").value == 0.0
    r = wer_metric("A b!", "a c")
    assert r.value == 0.5 and r.details == {"hypothesis": "A b!", "ref_words": 2}


def test_spelling_table_from_the_whisper_folder(tmp_path):
    assert load_spelling_mapping(None) == {} and load_spelling_mapping(tmp_path) == {}
    (tmp_path / "normalizer.json").write_text(json.dumps({"colour": "color"}))
    spelling = load_spelling_mapping(tmp_path)
    assert dict(spelling) == {"colour": "color"}
    assert word_error_rate("The colour red.", "the color red") == pytest.approx(1 / 3)
    assert word_error_rate("The colour red.", "the color red", spelling) == 0.0
    assert wer_metric("the color red", "The colour red.", spelling).value == 0.0
    (tmp_path / "normalizer.json").write_text(json.dumps(["colour", "color"]))
    with pytest.raises(ValueError, match="normalizer.json"):
        load_spelling_mapping(tmp_path)


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
