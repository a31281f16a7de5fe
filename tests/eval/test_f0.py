"""GPE, VDE, FFE: the definitions on hand-made tracks, then on WORLD F0 of synthetic voices."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.f0 import f0_errors, pair_frames
from dubforge.eval.mcd import mcd_from_analyses
from dubforge.eval.world import analyze
from tests.eval.signals import SR, voice


def test_counts_follow_the_definitions():
    ref = np.array([100.0, 100.0, 100.0, 100.0, 0.0, 0.0, 200.0, 200.0])
    gen = np.array([100.0, 125.0, 119.0, 0.0, 0.0, 150.0, 200.0, 250.0])
    # both voiced: frames 0, 1, 2, 6, 7; gross (>20 %): 1 (25 %), 7 (25 %); 2 is 19 %
    # voicing errors: frame 3 (gen unvoiced), frame 5 (gen voiced)
    e = f0_errors(gen, ref)
    assert e["gpe"].value == pytest.approx(2 / 5)
    assert e["vde"].value == pytest.approx(2 / 8)
    assert e["ffe"].value == pytest.approx((2 + 2) / 8)
    assert e["gpe"].details == {
        "frames": 8,
        "voiced_both": 5,
        "voicing_errors": 2,
        "gross_errors": 2,
    }
    assert f0_errors(gen, ref, threshold=0.1)["gpe"].value == pytest.approx(3 / 5)


def test_identical_tracks_score_zero():
    f0 = np.array([0.0, 110.0, 115.0, 0.0, 130.0])
    assert {k: r.value for k, r in f0_errors(f0, f0).items()} == {"gpe": 0, "vde": 0, "ffe": 0}


def test_gpe_is_not_available_without_common_voiced_frames():
    e = f0_errors(np.array([0.0, 100.0]), np.array([100.0, 0.0]))
    assert e["gpe"].value is None and "voiced" in e["gpe"].reason
    assert e["vde"].value == 1.0 and e["ffe"].value == 1.0


def test_pairing_direct_and_along_a_path():
    g, r = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])
    assert [a.tolist() for a in pair_frames(g, r)] == [[1.0, 2.0], [10.0, 20.0]]
    path = np.array([[0, 0], [1, 0], [2, 1]])
    assert [a.tolist() for a in pair_frames(g, r, path)] == [[1.0, 2.0, 3.0], [10.0, 10.0, 20.0]]


@pytest.mark.parametrize("bad", [(np.ones(3), np.ones(4)), (np.ones(0), np.ones(0))])
def test_bad_tracks_are_rejected(bad):
    with pytest.raises(ValueError):
        f0_errors(*bad)


@pytest.fixture(scope="module")
def ref_analysis():
    return analyze(voice(f0=120.0), SR)


def _errors(gen_f0: float, ref_analysis, alignment: str = "dtw") -> dict[str, float]:
    gen = analyze(voice(f0=gen_f0), SR)
    _, _, path = mcd_from_analyses(gen, ref_analysis)
    pairs = pair_frames(gen.f0, ref_analysis.f0, path if alignment == "dtw" else None)
    return {k: r.value for k, r in f0_errors(*pairs).items()}


@pytest.mark.parametrize("alignment", ["dtw", "direct"])
def test_world_f0_of_the_same_voice_has_no_errors(ref_analysis, alignment):
    assert _errors(120.0, ref_analysis, alignment) == {"gpe": 0.0, "vde": 0.0, "ffe": 0.0}


@pytest.mark.parametrize("factor", [1.3, 0.7])
def test_a_30_percent_pitch_shift_is_a_gross_error_everywhere(ref_analysis, factor):
    e = _errors(120.0 * factor, ref_analysis)
    assert e["gpe"] > 0.9
    assert e["vde"] < 0.05  # voicing is unchanged
    assert e["ffe"] > 0.6


def test_a_5_percent_pitch_shift_stays_under_the_threshold(ref_analysis):
    assert _errors(126.0, ref_analysis)["gpe"] < 0.05


def test_unvoiced_generation_raises_vde(ref_analysis):
    # the same timing, but noise instead of a voiced source
    rng = np.random.default_rng(0)
    v = voice(f0=120.0)
    noise = np.where(np.abs(v) > 1e-3, 0.1 * rng.standard_normal(len(v)), 0.0)
    gen = analyze(noise, SR)
    e = f0_errors(*pair_frames(gen.f0, ref_analysis.f0))
    assert e["vde"].value > 0.4 and e["ffe"].value >= e["vde"].value
