"""F0 errors GPE, VDE and FFE (DiFlowDubber appendix D.3, after Chu & Alwan, ICASSP 2009).

Over N paired frames (gen F0 g_n, ref F0 r_n from WORLD, 0 = unvoiced; world.py):
    V_g, V_r     voicing decisions g_n > 0, r_n > 0
    N_VV         frames voiced in both;  N_VE = #{n : V_g != V_r}  (voicing errors)
    N_GE         #{n : both voiced and |g_n - r_n| / r_n > 0.2}       (gross pitch errors)
    GPE = N_GE / N_VV      VDE = N_VE / N      FFE = (N_GE + N_VE) / N
GPE is "not available" when no frame is voiced in both (it has no denominator).

Frame pairing: "dtw" (default) uses the MCD DTW path on mel-cepstra c1..c13 (generated and
reference speech differ in timing, and the path pairs frames by spectral content, not pitch);
"direct" pairs frame n with frame n and drops the longer signal's tail.
"""

from __future__ import annotations

import numpy as np

from dubforge.eval.results import MetricResult, measured, not_available


def pair_frames(
    f0_gen: np.ndarray, f0_ref: np.ndarray, path: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paired F0 tracks: along `path` [L, 2] (gen, ref indices), or frame by frame if None."""
    f0_gen, f0_ref = np.asarray(f0_gen, np.float64), np.asarray(f0_ref, np.float64)
    if path is None:
        n = min(len(f0_gen), len(f0_ref))
        return f0_gen[:n], f0_ref[:n]
    return f0_gen[path[:, 0]], f0_ref[path[:, 1]]


def f0_errors(
    f0_gen: np.ndarray, f0_ref: np.ndarray, threshold: float = 0.2
) -> dict[str, MetricResult]:
    """GPE, VDE and FFE (fractions in [0, 1]) of two already paired F0 tracks of equal length."""
    g, r = np.asarray(f0_gen, np.float64), np.asarray(f0_ref, np.float64)
    if g.shape != r.shape or g.ndim != 1:
        raise ValueError(f"paired F0 tracks must be 1-D of equal length, got {g.shape}, {r.shape}")
    if g.size == 0:
        raise ValueError("F0 tracks are empty: nothing to compare")
    vg, vr = g > 0, r > 0
    both = vg & vr
    n_vv, n = int(both.sum()), int(g.size)
    n_ve = int(np.sum(vg != vr))
    rel = np.abs(g[both] - r[both]) / r[both]
    n_ge = int(np.sum(rel > threshold))
    counts = {"frames": n, "voiced_both": n_vv, "voicing_errors": n_ve, "gross_errors": n_ge}
    gpe = (
        measured("gpe", n_ge / n_vv, **counts)
        if n_vv
        else not_available("gpe", "no frame is voiced in both generated and reference audio")
    )
    return {
        "gpe": gpe,
        "vde": measured("vde", n_ve / n, **counts),
        "ffe": measured("ffe", (n_ge + n_ve) / n, **counts),
    }
