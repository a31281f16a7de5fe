"""Speech onset/offset error and speech-length ratio on espeak-ng speech."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.sync import (
    SileroActivity,
    build_activity_detector,
    energy_activity,
    sync_metrics,
)
from tests.eval.signals import SR, pad


def _values(res):
    return {k: r.value for k, r in res.items()}


@pytest.fixture(scope="module", params=["energy", "silero"])
def detector(request):
    return build_activity_detector(request.param)


def test_identical_speech_is_perfectly_in_sync(speech, detector):
    ref = pad(speech["m3_a"], 0.3)
    v = _values(sync_metrics(ref, ref, SR, detector))
    assert v == {"sync_onset_error": 0.0, "sync_offset_error": 0.0, "speech_length_ratio": 1.0}


def test_a_late_start_shows_as_onset_and_offset_error(speech, detector):
    ref, late = pad(speech["m3_a"], 0.3), pad(speech["m3_a"], 0.5)
    v = _values(sync_metrics(late, ref, SR, detector))
    assert v["sync_onset_error"] == pytest.approx(0.2, abs=0.02)
    assert v["sync_offset_error"] == pytest.approx(0.2, abs=0.02)
    assert v["speech_length_ratio"] == pytest.approx(1.0, abs=0.02)


def test_faster_speech_is_shorter(speech, detector):
    ref, fast = pad(speech["m3_a"], 0.3), pad(speech["m3_a_fast"], 0.3)
    v = _values(sync_metrics(fast, ref, SR, detector))
    assert v["sync_onset_error"] < 0.03
    assert v["sync_offset_error"] > 0.3
    assert 0.6 < v["speech_length_ratio"] < 0.9


def test_errors_grow_with_the_shift(speech):
    ref = pad(speech["m3_a"], 0.3)
    errs = [
        sync_metrics(pad(speech["m3_a"], 0.3 + s), ref, SR)["sync_onset_error"].value
        for s in (0.0, 0.05, 0.1, 0.4)
    ]
    assert errs == sorted(errs) and errs[0] == 0.0 and errs[-1] > 0.35


def test_energy_spans_find_pauses():
    t = np.arange(SR) / SR
    on = ((t >= 0.2) & (t < 0.4)) | ((t >= 0.6) & (t < 0.7))
    x = np.where(on, 0.5 * np.sin(2 * np.pi * 300 * t), 0.0)
    spans = energy_activity(x, SR)
    assert len(spans) == 2
    assert spans[0][0] == pytest.approx(0.2, abs=0.02) and spans[1][1] == pytest.approx(
        0.7, abs=0.02
    )


def test_silence_makes_sync_not_available(speech):
    ref = pad(speech["m3_a"], 0.3)
    res = sync_metrics(np.zeros_like(ref), ref, SR)
    assert all(r.value is None and "generated" in r.reason for r in res.values())


def test_silero_returns_spans_in_seconds(speech):
    spans = SileroActivity()(pad(speech["m3_a"], 0.5), SR)
    assert spans and spans[0][0] == pytest.approx(0.5, abs=0.1)


def test_mismatched_rates_and_unknown_detector_are_errors(speech):
    with pytest.raises(ValueError, match="unknown activity detector"):
        build_activity_detector("webrtc")
    with pytest.raises(ValueError, match="empty"):
        sync_metrics(np.zeros(0, np.float32), speech["m3_a"], SR)
