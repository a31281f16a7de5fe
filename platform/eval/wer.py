"""Word error rate as the papers compute it: jiwer after Whisper's English text normaliser.

Normaliser: `EnglishTextNormalizer` of Whisper (the copy in transformers'
`models/whisper/english_normalizer.py`), applied to reference and hypothesis alike: lower
case; bracketed/parenthesised text and fillers (uh, um, hmm) removed; contractions and titles
expanded ("don't" -> "do not", "won't" -> "will not", "Mr." -> "mister"); punctuation and
diacritics removed; spelled-out numbers turned into digits ("twenty-five dollars" -> "$25");
British spellings mapped to American ones through `spelling`. One step comes before it:
typographic apostrophes (’ ‘ ʼ) become ', since the normaliser's contraction rules match only
the ASCII one and scripts (subtitles) often use the typographic one where Whisper writes ',
which would otherwise turn every "don’t" into two errors against "don't".

The spelling table is Whisper's `normalizer.json` (British -> American word pairs). No
installed package ships it, so it is read from the Whisper checkpoint folder when that folder
holds one (`load_spelling_mapping`; hub Whisper checkpoints do) and is empty otherwise: then
"colour" vs "color" counts as an error, as without Whisper's table.

WER = (S + D + I) / N_ref (jiwer's word-level alignment), the minimum substitutions, deletions
and insertions turning the reference words into the hypothesis words, over the number of
reference words; it can exceed 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from dubforge.eval.results import MetricResult, measured

SPELLING_FILE = "normalizer.json"  # the name Whisper checkpoints give the spelling table
NO_SPELLING: Mapping[str, str] = MappingProxyType({})
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})


def load_spelling_mapping(folder: str | Path | None) -> Mapping[str, str]:
    """Whisper's British -> American spelling table from `folder`/normalizer.json; an empty
    table when `folder` is None or holds no such file. ValueError when the file is not a JSON
    object of strings."""
    path = None if folder is None else Path(folder) / SPELLING_FILE
    if path is None or not path.is_file():
        return NO_SPELLING
    table = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in table.items()
    ):
        raise ValueError(f"{path} is not a JSON object of word -> word spellings")
    return MappingProxyType(table)


def normalize_text(text: str, spelling: Mapping[str, str] = NO_SPELLING) -> list[str]:
    """Words of `text` after Whisper's English normaliser (see the module docstring)."""
    # transformers' copy of Whisper's normaliser; building one takes microseconds
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(spelling)(text.translate(_APOSTROPHES)).split()


def word_error_rate(
    reference: str, hypothesis: str, spelling: Mapping[str, str] = NO_SPELLING
) -> float:
    """WER of `hypothesis` against `reference` (both normalised) through jiwer; ValueError if
    the reference has no words."""
    import jiwer

    ref, hyp = normalize_text(reference, spelling), normalize_text(hypothesis, spelling)
    if not ref:
        raise ValueError(f"reference text {reference!r} has no words after normalisation")
    return float(jiwer.wer(" ".join(ref), " ".join(hyp)))


def wer_metric(
    hypothesis: str, reference: str, spelling: Mapping[str, str] = NO_SPELLING
) -> MetricResult:
    """WER of an ASR transcript against the script line, with the transcript in `details`."""
    return measured(
        "wer",
        word_error_rate(reference, hypothesis, spelling),
        hypothesis=hypothesis,
        ref_words=len(normalize_text(reference, spelling)),
    )
