"""DNSMOS through speechmos's bundled ONNX models: ranking, the reference scorer, resampling,
and "not available" when the models cannot load."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from dubforge.eval.dnsmos import DNSMOS_KEYS, Dnsmos, dnsmos_metrics, load_dnsmos
from tests.eval.signals import voice

RATE = 16000


@pytest.fixture(scope="module")
def model() -> Dnsmos:
    m = load_dnsmos()
    assert m.available, m.reason
    return m


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A harmonic "speech-like" signal at 16 kHz: 2 s with two pauses."""
    return voice(sr=RATE, dur=2.0, pauses=((0.5, 0.7), (1.2, 1.3))).astype(np.float64)


@pytest.fixture(scope="module")
def clean_scores(model, clean) -> dict:
    return dnsmos_metrics(model, clean, RATE)


def test_loud_noise_lowers_overall_and_background_scores(model, clean, clean_scores):
    noisy = clean + 0.3 * np.random.default_rng(1).standard_normal(len(clean))
    dirty = dnsmos_metrics(model, noisy, RATE)
    for name in ("dnsmos_ovrl", "dnsmos_bak"):
        assert clean_scores[name].value > dirty[name].value + 1.0, name


def test_metrics_are_the_reference_scorer_on_16k_input(clean, clean_scores):
    from speechmos import dnsmos

    assert list(clean_scores) == ["dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"]
    reference = dnsmos.run(clean.astype(np.float32), sr=RATE)
    for name, key in DNSMOS_KEYS.items():
        r = clean_scores[name]
        assert r.name == name and r.available and 1.0 <= r.value <= 5.0
        assert r.value == pytest.approx(float(reference[key]), abs=1e-6), name


@pytest.mark.parametrize("sr", [22050, 24000])
def test_other_rates_are_resampled_to_16k(model, clean, clean_scores, sr):
    res = dnsmos_metrics(model, soxr.resample(clean, RATE, sr), sr)
    for name in DNSMOS_KEYS:
        assert res[name].value == pytest.approx(clean_scores[name].value, abs=0.1), name


def test_models_load_once(model):
    assert load_dnsmos() is model


def test_out_of_range_samples_are_clipped_not_refused(model, clean):
    assert dnsmos_metrics(model, 3.0 * clean, RATE)["dnsmos_ovrl"].available


def test_a_model_that_cannot_load_is_not_available(monkeypatch, clean):
    from speechmos import dnsmos

    def broken(primary: str, p808: str) -> None:
        raise OSError(f"cannot read {primary}")

    monkeypatch.setattr(dnsmos, "DNSMOS", broken)
    m = Dnsmos()
    assert not m.available and "sig_bak_ovr.onnx" in m.reason and "OSError" in m.reason
    res = dnsmos_metrics(m, clean, RATE)
    assert list(res) == list(DNSMOS_KEYS)
    assert all(r.value is None and r.reason == m.reason for r in res.values())
    with pytest.raises(RuntimeError, match="could not load"):
        m.scores(clean, RATE)


def test_switched_off_is_not_available(clean):
    res = dnsmos_metrics(None, clean, RATE, prefix="bg_")
    assert list(res) == ["bg_dnsmos_sig", "bg_dnsmos_bak", "bg_dnsmos_ovrl", "bg_dnsmos_p808"]
    assert all(r.value is None and "EvalConfig.dnsmos" in r.reason for r in res.values())
