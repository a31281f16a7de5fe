"""Word error rate: word-level Levenshtein distance after a documented text normaliser.

Normaliser (applied to reference and hypothesis alike):
  1. Unicode NFKC, then case folding ("Straße" -> "strasse");
  2. typographic apostrophes (’ ‘ ʼ) become ';
  3. hyphens, dashes, slashes and underscores separate words ("well-known" -> "well known");
  4. every other character that is not a letter, digit, apostrophe or space is dropped;
  5. apostrophes are kept only inside words ("don't" stays, "'quoted'" -> "quoted");
  6. split on whitespace.
Numbers are not spelled out and spellings are not unified (unlike Whisper's English
normaliser), so "2" vs "two" counts as an error.

WER = (S + D + I) / N_ref, the minimum substitutions, deletions and insertions turning the
reference words into the hypothesis words, over the number of reference words; it can exceed 1.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from dubforge.eval.results import MetricResult, measured

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})
_SEPARATORS = re.compile(r"[-‐‑‒–—―_/\\]")
_OTHER = re.compile(r"[^\w\s']")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize_text(text: str) -> list[str]:
    """Words of `text` after the normaliser in the module docstring."""
    s = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    s = _OTHER.sub(" ", _SEPARATORS.sub(" ", s))
    return _LOOSE_APOSTROPHE.sub(" ", s).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Minimum word substitutions + deletions + insertions turning `ref` into `hyp`."""
    prev = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return int(prev[-1])


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of `hypothesis` against `reference` (both normalised); ValueError if the reference
    has no words."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        raise ValueError(f"reference text {reference!r} has no words after normalisation")
    return edit_distance(ref, hyp) / len(ref)


def wer_metric(hypothesis: str, reference: str) -> MetricResult:
    """WER of an ASR transcript against the script line, with the transcript in `details`."""
    return measured(
        "wer",
        word_error_rate(reference, hypothesis),
        hypothesis=hypothesis,
        ref_words=len(normalize_text(reference)),
    )
