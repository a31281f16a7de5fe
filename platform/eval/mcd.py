"""MCD-DTW and MCD-DTW-SL, the spectral distances of the V2C benchmark.

Definitions (V2C-Net, Chen et al. CVPR 2022, and its reference code pymcd; ProDubber Sec. 4.2
"MCD-DTW-SL ... adjusts the weights based on duration", DeepDubber/MM-MovieDubber "MCD-SL"):

    features   mc_t = 13th-order mel-cepstrum (alpha 0.65) of WORLD's envelope, 5 ms frames
               at 22.05 kHz (world.py); c0 (frame energy) is dropped, d = 1..13
    path       exact DTW between the two c1..c13 sequences (Euclidean frame cost)
    MCD-DTW    = 1/L * sum over the L path pairs (i, j) of
                 (10 / ln 10) * sqrt(2 * sum_d (mc_gen[i, d] - mc_ref[j, d])^2)     [dB]
               i.e. the mean over DTW path pairs (not over reference frames) of each pair's
               distance; a frame repeated by the path counts once per pair
    MCD-DTW-SL = MCD-DTW * max(T_gen, T_ref) / min(T_gen, T_ref)
               with T the number of 5 ms WORLD frames of the whole waveforms (silences
               included), exactly pymcd's "dtw_sl" coefficient

`v2c_compat=True` reproduces pymcd's two quirks (c0 kept in the pair distance though not in
the DTW cost; the power envelope read as an amplitude, doubling the cepstrum) so numbers can be
compared with published tables; the remaining difference is fastdtw vs exact DTW.
"""

from __future__ import annotations

import numpy as np

from dubforge.eval.audio import check_pair
from dubforge.eval.results import MetricResult, measured
from dubforge.eval.world import WorldAnalysis, analyze, dtw_path

# 10 / ln(10) * sqrt(2): dB per unit of cepstral Euclidean distance
MCD_CONST = 10.0 / np.log(10.0) * np.sqrt(2.0)


def mcd_from_analyses(
    gen: WorldAnalysis, ref: WorldAnalysis, v2c_compat: bool = False
) -> tuple[MetricResult, MetricResult, np.ndarray]:
    """MCD-DTW, MCD-DTW-SL and the DTW path [L, 2] (gen index, ref index) from WORLD analyses."""
    path = dtw_path(gen.mcep[:, 1:], ref.mcep[:, 1:])
    first = 0 if v2c_compat else 1
    diff = gen.mcep[path[:, 0], first:] - ref.mcep[path[:, 1], first:]  # [L, 13]
    mcd = float(np.mean(MCD_CONST * np.sqrt(np.sum(diff * diff, axis=1))))
    t_gen, t_ref = gen.frames, ref.frames
    ratio = max(t_gen, t_ref) / min(t_gen, t_ref)
    details = {"frames_gen": t_gen, "frames_ref": t_ref, "path_len": int(len(path))}
    return (
        measured("mcd_dtw", mcd, **details),
        measured("mcd_dtw_sl", mcd * ratio, length_ratio=ratio, **details),
        path,
    )


def mcd_dtw(
    gen: np.ndarray, ref: np.ndarray, sr: int, v2c_compat: bool = False
) -> tuple[MetricResult, MetricResult]:
    """(MCD-DTW, MCD-DTW-SL) in dB between generated and reference mono audio at `sr`."""
    gen, ref = check_pair(gen, ref, sr)
    a = analyze(gen, sr, v2c_compat=v2c_compat)
    b = analyze(ref, sr, v2c_compat=v2c_compat)
    plain, sl, _ = mcd_from_analyses(a, b, v2c_compat)
    return plain, sl
