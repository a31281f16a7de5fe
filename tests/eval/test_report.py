"""Metrics tables (JSON + Markdown) and sample files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from dubforge.eval.report import save_sample, summarize, write_report
from dubforge.eval.results import MetricResult, measured, not_available

ROWS = [
    {
        "sample": "clip_a",
        "mcd_dtw": measured("mcd_dtw", 4.0, path_len=3),
        "wer": 0.5,
        "lse_d": not_available("lse_d", "no SyncNet weights configured"),
    },
    {
        "sample": "clip_b",
        "mcd_dtw": measured("mcd_dtw", 6.0),
        "wer": None,
        "lse_d": not_available("lse_d", "no SyncNet weights configured"),
    },
]


def test_summary_averages_available_values_only():
    s = summarize(ROWS)
    assert list(s) == ["mcd_dtw", "wer", "lse_d"]  # table order, not row order
    assert s["mcd_dtw"] == {"mean": 5.0, "count": 2, "not_available": 0, "reasons": []}
    assert s["wer"]["mean"] == 0.5 and s["wer"]["count"] == 1
    assert s["lse_d"]["mean"] is None and s["lse_d"]["reasons"] == ["no SyncNet weights configured"]


def test_report_files(tmp_path):
    paths = write_report(ROWS, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["metrics"] == ["mcd_dtw", "wer", "lse_d"]
    assert doc["rows"][0]["mcd_dtw"] == {"value": 4.0, "reason": None, "details": {"path_len": 3}}
    assert doc["rows"][1]["lse_d"]["value"] is None
    back = MetricResult.from_dict("mcd_dtw", doc["rows"][0]["mcd_dtw"])
    assert back == ROWS[0]["mcd_dtw"]
    md = paths["markdown"].read_text().splitlines()
    assert md[0] == "| sample | MCD-DTW ↓ | WER ↓ | LSE-D ↓ |"
    assert md[2] == "| clip_a | 4.000 | 0.500 | n/a |"
    assert md[4] == "| **mean (n)** | 5.000 (2) | 0.500 (1) | n/a (0) |"
    assert "- lse_d: no SyncNet weights configured" in md


def test_report_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path)
    with pytest.raises(ValueError, match="sample"):
        write_report([{"mcd_dtw": 1.0}], tmp_path)


def test_save_sample_writes_wav_and_png(tmp_path):
    sr = 16000
    wave = 0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr).astype(np.float32)
    paths = save_sample(tmp_path, "gen_001", wave, sr)
    back, back_sr = sf.read(paths["wav"], dtype="float32")
    assert back_sr == sr and len(back) == sr
    np.testing.assert_allclose(back, wave, atol=1e-4)  # 16-bit PCM
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match="sample name"):
        save_sample(tmp_path, "../escape", wave, sr)
    with pytest.raises(ValueError, match="empty"):
        save_sample(tmp_path, "empty", np.zeros(0, np.float32), sr)


def test_metric_results_never_hide_a_missing_value():
    with pytest.raises(ValueError, match="reason"):
        MetricResult("x", None)
    with pytest.raises(ValueError, match="finite"):
        MetricResult("x", float("nan"))
    r = not_available("x", "why")
    assert not r.available and r.to_dict() == {"value": None, "reason": "why", "details": {}}


def test_every_metric_has_a_label_in_table_order(tmp_path):
    from dubforge.eval.background import BG_METRICS
    from dubforge.eval.evaluate import METRICS
    from dubforge.eval.report import LABELS

    assert list(LABELS) == [*METRICS, *BG_METRICS]
    row = {
        "sample": "clip",
        "bg_energy_ratio_db": measured("bg_energy_ratio_db", -3.0),
        "dnsmos_ovrl": measured("dnsmos_ovrl", 3.2),
        "mcd_dtw": measured("mcd_dtw", 5.0),
    }
    md = write_report([row], tmp_path)["markdown"].read_text().splitlines()
    assert md[0] == "| sample | MCD-DTW ↓ | DNSMOS OVRL ↑ | BG energy (dB) →0 |"
