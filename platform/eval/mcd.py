"""MCD-DTW and MCD-DTW-SL, the spectral distances of the V2C benchmark.

Definitions (V2C-Net, Chen et al. CVPR 2022, and its reference code pymcd; ProDubber Sec. 4.2
"MCD-DTW-SL ... adjusts the weights based on duration", DeepDubber/MM-MovieDubber "MCD-SL"):

    features   mc_t = 13th-order mel-cepstrum (alpha 0.65) of WORLD's envelope, 5 ms frames
               at 22.05 kHz (world.py), c0..c13
    path       exact DTW between the two c1..c13 sequences (Euclidean frame cost)
    MCD-DTW    = 1/L * sum over the L path pairs (i, j) of
                 (10 / ln 10) * sqrt(2 * sum_d (mc_gen[i, d] - mc_ref[j, d])^2)     [dB]
               i.e. the mean over DTW path pairs (not over reference frames) of each pair's
               distance; a frame repeated by the path counts once per pair
    MCD-DTW-SL = MCD-DTW * max(T_gen, T_ref) / min(T_gen, T_ref)
               with T the number of 5 ms WORLD frames of the whole waveforms (silences
               included), exactly pymcd's "dtw_sl" coefficient

Two definitions of the features and the frame distance:
  "v2c" (default)  pymcd's, which the published tables use: WORLD's power envelope is read as
                   an amplitude (`pysptk.mcep(sp, itype=3)`), which doubles the cepstrum, and
                   c0 (frame energy) stays in the frame distance, d = 0..13, though the DTW
                   cost leaves it out. Equal to pymcd's value on the same DTW path; pymcd
                   itself aligns with fastdtw, an approximation, and we use exact DTW.
  "dubforge"       a standard mel-cepstrum of the power envelope with c0 dropped, d = 1..13,
                   so that a pure gain change costs nothing.
"""

from __future__ import annotations

import numpy as np

from dubforge.eval.audio import check_pair
from dubforge.eval.config import MCD_DEFINITION, McdDefinition
from dubforge.eval.results import MetricResult, measured
from dubforge.eval.world import MCEP_ALPHA, MCEP_ORDER, WorldAnalysis, analyze, dtw_path, sp_to_mcep

# 10 / ln(10) * sqrt(2): dB per unit of cepstral Euclidean distance
MCD_CONST = 10.0 / np.log(10.0) * np.sqrt(2.0)
MCD_DEFINITIONS = ("v2c", "dubforge")


def _check_definition(definition: str) -> None:
    if definition not in MCD_DEFINITIONS:
        raise ValueError(
            f"unknown MCD definition {definition!r}; choose from {MCD_DEFINITIONS} "
            "(EvalConfig.mcd_definition)"
        )


def mel_cepstrum(analysis: WorldAnalysis, definition: McdDefinition = MCD_DEFINITION) -> np.ndarray:
    """Mel-cepstrum [T, 14] (c0..c13) of a WORLD analysis' envelope, as `definition` reads it."""
    _check_definition(definition)
    # pymcd hands the power envelope to an amplitude-input mcep: log(sp^2) where we take log(sp)
    sp = np.square(analysis.sp) if definition == "v2c" else analysis.sp
    return sp_to_mcep(sp, MCEP_ORDER, MCEP_ALPHA)


def path_mcd(
    gen_mcep: np.ndarray,
    ref_mcep: np.ndarray,
    path: np.ndarray,
    definition: McdDefinition = MCD_DEFINITION,
) -> float:
    """Mean frame distance (dB) over the path pairs [L, 2] (gen index, ref index) of two
    mel-cepstra [T, 14]; c0 counts only under the "v2c" definition."""
    _check_definition(definition)
    path = np.asarray(path)
    first = 0 if definition == "v2c" else 1
    diff = gen_mcep[path[:, 0], first:] - ref_mcep[path[:, 1], first:]  # [L, 14 - first]
    return float(np.mean(MCD_CONST * np.sqrt(np.sum(diff * diff, axis=1))))


def mcd_from_analyses(
    gen: WorldAnalysis, ref: WorldAnalysis, definition: McdDefinition = MCD_DEFINITION
) -> tuple[MetricResult, MetricResult, np.ndarray]:
    """MCD-DTW, MCD-DTW-SL and the DTW path [L, 2] (gen index, ref index) from WORLD analyses.

    The cepstra are taken from the analyses' envelopes under `definition`, whatever
    mel-cepstrum `analyze` stored."""
    mc_gen, mc_ref = mel_cepstrum(gen, definition), mel_cepstrum(ref, definition)
    path = dtw_path(mc_gen[:, 1:], mc_ref[:, 1:])
    mcd = path_mcd(mc_gen, mc_ref, path, definition)
    t_gen, t_ref = gen.frames, ref.frames
    ratio = max(t_gen, t_ref) / min(t_gen, t_ref)
    details = {
        "frames_gen": t_gen,
        "frames_ref": t_ref,
        "path_len": int(len(path)),
        "definition": definition,
    }
    return (
        measured("mcd_dtw", mcd, **details),
        measured("mcd_dtw_sl", mcd * ratio, length_ratio=ratio, **details),
        path,
    )


def mcd_dtw(
    gen: np.ndarray,
    ref: np.ndarray,
    sr: int,
    definition: McdDefinition = MCD_DEFINITION,
) -> tuple[MetricResult, MetricResult]:
    """(MCD-DTW, MCD-DTW-SL) in dB between generated and reference mono audio at `sr`, with
    WORLD's DIO F0 for the envelope as pymcd."""
    _check_definition(definition)
    gen, ref = check_pair(gen, ref, sr)
    a, b = analyze(gen, sr), analyze(ref, sr)
    plain, sl, _ = mcd_from_analyses(a, b, definition)
    return plain, sl
