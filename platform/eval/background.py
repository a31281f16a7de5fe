"""Metrics of a generated background stem (v2st's second stream) against the clip.

bg_av_align         AV-Align (av_align.py: TempoTokens' onset / optical-flow peak IoU, as
                    DualDub scores the audio stream) of the generated background against the
                    clip's full video frames, not the mouth crops: background sound follows
                    what happens in the whole picture
bg_dnsmos_bak       DNSMOS BAK (dnsmos.py) of the generated background stem: how intrusive
                    its noise would be under speech, 1..5, higher = less intrusive
bg_energy_ratio_db  10 log10(P_gen / P_ref), the mean power of the generated background over
                    that of the reference background (the delivered stem of the same clip),
                    in dB; 0 = the same level, negative = quieter. Mean power, so stems of
                    slightly different lengths compare; the generated power is floored at
                    -100 dBFS so a silent stem reports a finite, very negative ratio, and a
                    reference below -100 dBFS leaves the ratio "not available".
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dubforge.eval.audio import check_pair, check_wave
from dubforge.eval.av_align import av_align
from dubforge.eval.dnsmos import Dnsmos, dnsmos_metrics
from dubforge.eval.results import MetricResult, measured, not_available

BG_METRICS = ("bg_av_align", "bg_dnsmos_bak", "bg_energy_ratio_db")
SILENCE_POWER = 1e-10  # mean power of -100 dBFS: below it a stem counts as digital silence


def _dbfs(power: float) -> float:
    return float(10.0 * np.log10(max(power, SILENCE_POWER)))


def energy_ratio_db(gen: np.ndarray, ref: np.ndarray, sr: int) -> MetricResult:
    """bg_energy_ratio_db of the generated background against the reference one."""
    gen, ref = check_pair(gen, ref, sr)
    p_gen, p_ref = float(np.mean(gen * gen)), float(np.mean(ref * ref))
    if p_ref < SILENCE_POWER:
        return not_available(
            "bg_energy_ratio_db", "reference background is silent (below -100 dBFS)"
        )
    gen_db, ref_db = _dbfs(p_gen), _dbfs(p_ref)
    return measured("bg_energy_ratio_db", gen_db - ref_db, gen_dbfs=gen_db, ref_dbfs=ref_db)


def background_metrics(
    gen: np.ndarray,
    ref: np.ndarray | None,
    sr: int,
    frames: np.ndarray | None,
    fps: float,
    *,
    dnsmos: Dnsmos | None,
    window_frames: float,
) -> dict[str, MetricResult]:
    """Every metric in `BG_METRICS` for a generated background stem `gen` at `sr`.

    `ref`: the reference background at `sr` (None: the energy ratio is "not available");
    `frames`: the clip's full RGB video frames [T, H, W, 3] at `fps` (None: AV-Align is "not
    available"); `dnsmos`: a loaded `Dnsmos` (None: switched off); `window_frames`: AV-Align's
    matching window (EvalConfig.av_align_window_frames)."""
    gen = check_wave(gen, sr, "generated background")
    if frames is None:
        av = not_available("bg_av_align", "no video frames given")
    else:
        av = dataclasses.replace(av_align(gen, sr, frames, fps, window_frames), name="bg_av_align")
    if ref is None:
        energy = not_available("bg_energy_ratio_db", "no reference background given")
    else:
        energy = energy_ratio_db(gen, ref, sr)
    bak = dnsmos_metrics(dnsmos, gen, sr, prefix="bg_")["bg_dnsmos_bak"]
    return {"bg_av_align": av, "bg_dnsmos_bak": bak, "bg_energy_ratio_db": energy}
