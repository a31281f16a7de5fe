"""Background-stem metrics: AV-Align against the full frames, DNSMOS BAK, energy ratio."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.background import BG_METRICS, background_metrics, energy_ratio_db
from dubforge.eval.dnsmos import load_dnsmos
from tests.eval.signals import SR, bursts, jumping_square

FPS = 25.0
ONSETS = [0.2, 0.6, 1.0, 1.32, 1.72]


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    return jumping_square([round(t * FPS) for t in ONSETS], 50)


@pytest.fixture(scope="module")
def stem() -> np.ndarray:
    return bursts(ONSETS, 2.0)


def test_every_metric_for_a_matching_stem(stem, video):
    res = background_metrics(stem, stem, SR, video, FPS, dnsmos=load_dnsmos(), window_frames=1.0)
    assert tuple(res) == BG_METRICS
    assert all(r.name == name for name, r in res.items())
    assert res["bg_av_align"].value == 1.0
    assert res["bg_av_align"].details == {"audio_peaks": 5, "video_peaks": 5}
    assert res["bg_energy_ratio_db"].value == 0.0
    assert 1.0 <= res["bg_dnsmos_bak"].value <= 5.0


def test_a_late_stem_misses_the_picture(stem, video):
    late = bursts([t + 0.2 for t in ONSETS], 2.2)
    res = background_metrics(late, stem, SR, video, FPS, dnsmos=None, window_frames=1.0)
    assert res["bg_av_align"].value < 0.2


def test_energy_ratio_in_db(stem):
    assert energy_ratio_db(0.5 * stem, stem, SR).value == pytest.approx(-6.0206, abs=1e-4)
    louder = energy_ratio_db(np.sqrt(10.0) * stem, stem, SR)
    assert louder.value == pytest.approx(10.0)
    assert louder.details["gen_dbfs"] - louder.details["ref_dbfs"] == pytest.approx(10.0)
    # mean power: a stem followed by as much silence has half the power
    padded = np.concatenate([stem, np.zeros_like(stem)])
    assert energy_ratio_db(padded, stem, SR).value == pytest.approx(-3.0103, abs=1e-4)
    silent = energy_ratio_db(np.zeros_like(stem), stem, SR)
    assert silent.value == pytest.approx(-100.0 - silent.details["ref_dbfs"])
    r = energy_ratio_db(stem, np.zeros_like(stem), SR)
    assert r.value is None and "silent" in r.reason


def test_missing_inputs_are_not_available(stem):
    res = background_metrics(stem, None, SR, None, FPS, dnsmos=None, window_frames=1.0)
    assert tuple(res) == BG_METRICS
    assert all(r.value is None for r in res.values())
    assert "video" in res["bg_av_align"].reason
    assert "reference background" in res["bg_energy_ratio_db"].reason
    assert "EvalConfig.dnsmos" in res["bg_dnsmos_bak"].reason


def test_bad_stems_are_value_errors(stem, video):
    with pytest.raises(ValueError, match="generated background: audio is empty"):
        background_metrics(np.zeros(0), stem, SR, video, FPS, dnsmos=None, window_frames=1.0)
    with pytest.raises(ValueError, match="mono"):
        background_metrics(
            np.stack([stem, stem]), stem, SR, video, FPS, dnsmos=None, window_frames=1.0
        )
