"""Evaluation outputs: the metrics table (JSON + Markdown) and listenable/viewable samples.

`write_report(rows, out_dir)` takes one row per evaluated clip: a mapping with a "sample" name
and metric name -> `MetricResult` (or a plain float / None). Summary means are over the rows
where the metric is available; the count of such rows is written beside each mean, and every
distinct "not available" reason is listed, so a missing model never looks like a score.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dubforge.eval.audio import check_wave
from dubforge.eval.results import MetricResult

# label and direction for the Markdown header (units: MCD dB, sync seconds, DNSMOS MOS 1..5,
# background energy ratio dB, the rest ratios)
LABELS = {
    "mcd_dtw": "MCD-DTW ↓",
    "mcd_dtw_sl": "MCD-DTW-SL ↓",
    "gpe": "GPE ↓",
    "vde": "VDE ↓",
    "ffe": "FFE ↓",
    "sync_onset_error": "onset err (s) ↓",
    "sync_offset_error": "offset err (s) ↓",
    "speech_length_ratio": "length ratio →1",
    "secs": "SECS ↑",
    "wer": "WER ↓",
    "dnsmos_sig": "DNSMOS SIG ↑",
    "dnsmos_bak": "DNSMOS BAK ↑",
    "dnsmos_ovrl": "DNSMOS OVRL ↑",
    "dnsmos_p808": "DNSMOS P.808 ↑",
    "av_align": "AV-Align ↑",
    "lse_d": "LSE-D ↓",
    "lse_c": "LSE-C ↑",
    "bg_av_align": "BG AV-Align ↑",
    "bg_dnsmos_bak": "BG DNSMOS BAK ↑",
    "bg_energy_ratio_db": "BG energy (dB) →0",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _as_result(name: str, v: Any) -> MetricResult:
    if isinstance(v, MetricResult):
        return v
    if v is None:
        return MetricResult(name, None, "not computed")
    return MetricResult(name, float(v))


def _metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k != "sample" and k not in names]
    order = list(LABELS)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean over available rows, how many rows had it, and the distinct reasons."""
    out: dict[str, dict[str, Any]] = {}
    for name in _metric_names(rows):
        res = [_as_result(name, r[name]) for r in rows if name in r]
        vals = [r.value for r in res if r.value is not None]
        reasons = sorted({r.reason for r in res if r.value is None and r.reason})
        out[name] = {
            "mean": float(np.mean(vals)) if vals else None,
            "count": len(vals),
            "not_available": len(res) - len(vals),
            "reasons": reasons,
        }
    return out


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json and metrics.md for `rows` into `out_dir`; returns both paths."""
    if not rows:
        raise ValueError("write_report needs at least one evaluated row")
    for i, row in enumerate(rows):
        if not isinstance(row.get("sample"), str):
            raise ValueError(f"row {i} has no 'sample' name (str)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, summary = _metric_names(rows), summarize(rows)
    table = [
        {"sample": r["sample"], **{n: _as_result(n, r[n]).to_dict() for n in names if n in r}}
        for r in rows
    ]
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md"}
    doc = {"metrics": names, "rows": table, "summary": summary}
    paths["json"].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    paths["markdown"].write_text(_markdown(rows, names, summary))
    return paths


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _markdown(rows: Sequence[Mapping[str, Any]], names: list[str], summary: dict) -> str:
    head = ["sample", *[LABELS.get(n, n) for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_fmt(_as_result(n, r[n]).value) if n in r else "" for n in names]
        lines.append("| " + " | ".join([r["sample"], *cells]) + " |")
    means = [f"{_fmt(summary[n]['mean'])} ({summary[n]['count']})" for n in names]
    lines.append("| **mean (n)** | " + " | ".join(means) + " |")
    notes = [f"- {n}: {'; '.join(s['reasons'])}" for n, s in summary.items() if s["reasons"]]
    if notes:
        lines += ["", "Not available:", *notes]
    return "\n".join(lines) + "\n"


def save_sample(out_dir: str | Path, name: str, wave: np.ndarray, sr: int) -> dict[str, Path]:
    """Write `name`.wav (16-bit PCM) and `name`.png (log-mel spectrogram) into `out_dir`."""
    import soundfile as sf

    if not _NAME.match(name):
        raise ValueError(f"sample name {name!r} must be letters, digits, '.', '_' or '-'")
    x = check_wave(wave, sr, f"sample {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"wav": out / f"{name}.wav", "png": out / f"{name}.png"}
    sf.write(paths["wav"], np.clip(x, -1.0, 1.0), sr, subtype="PCM_16")
    _spectrogram_png(x, sr, paths["png"], name)
    return paths


def _spectrogram_png(x: np.ndarray, sr: int, path: Path, title: str) -> None:
    import librosa
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # ~46 ms window, ~11.6 ms hop at 22.05 kHz, scaled with the rate
    n_fft = int(2 ** np.ceil(np.log2(0.046 * sr)))
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float32), sr=sr, n_fft=n_fft, hop_length=n_fft // 4, n_mels=80
    )
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    fig = Figure(figsize=(8, 3), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot global state
    ax = fig.add_subplot()
    im = ax.imshow(
        db, origin="lower", aspect="auto", cmap="magma", extent=(0.0, len(x) / sr, 0, db.shape[0])
    )
    ax.set(xlabel="time (s)", ylabel="mel band", title=title)
    fig.colorbar(im, ax=ax, format="%+.0f dB")
    fig.tight_layout()
    fig.savefig(path)
