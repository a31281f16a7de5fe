"""Synthetic movie corpus: espeak-ng speech, talking-face video, mixed backgrounds."""
