"""Evaluation metrics for generated dubbing audio.

Each metric is a function over waveforms/arrays in its own module (definitions and paper
references in each module's docstring):
  mcd.py       MCD-DTW, MCD-DTW-SL (V2C)            f0.py        GPE, VDE, FFE (DiFlowDubber)
  sync.py      onset/offset error, length ratio     av_align.py  AV-Align (DualDub/TempoTokens)
  speaker.py   SECS (pluggable speaker encoder)     wer.py/asr.py WER (pluggable ASR, Whisper)
  syncnet.py   LSE-D / LSE-C (SyncNet weights)
`evaluate.py` runs them all (`Evaluator`, `evaluate_pair`); `report.py` writes tables and
samples; `run.py` scores an exported checkpoint on ingest shards (`evaluate_checkpoint`). A
metric that cannot run returns a `MetricResult` with value None and a reason.

The names below are importable from `dubforge.eval` and load their module on first use, so
importing this package stays cheap (no torch, no models).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "config",
    "MetricResult": "results",
    "Evaluator": "evaluate",
    "evaluate_pair": "evaluate",
    "METRICS": "evaluate",
    "write_report": "report",
    "save_sample": "report",
    "evaluate_checkpoint": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dubforge.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dubforge.eval.{_EXPORTS[name]}"), name)
