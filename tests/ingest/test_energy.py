"""The energy filter's measure and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.ingest.energy import judge, required_stems, rms_db


def test_rms_db_reference_levels():
    t = np.arange(48000) / 48000
    assert rms_db(np.sin(2 * np.pi * 440 * t)) == pytest.approx(-3.01, abs=0.01)
    assert rms_db(0.01 * np.sin(2 * np.pi * 440 * t)) == pytest.approx(-43.01, abs=0.01)
    assert rms_db(np.zeros(100)) == -120.0 and rms_db(np.zeros(0)) == -120.0


def test_required_stems_per_task():
    assert required_stems(["v2st"]) == ("speech", "background")
    assert required_stems(["tts", "v2s"]) == ("speech",)
    assert required_stems(["v2a"]) == ("background",)
    with pytest.raises(ValueError, match="unknown task"):
        required_stems(["karaoke"])


def test_judge():
    loud, quiet = np.full(1000, 0.1), np.full(1000, 0.001)  # -20 dB, -60 dB
    levels, reason, _ = judge({"speech": loud, "background": loud}, ("speech", "background"), -40)
    assert reason is None and levels == {"speech": -20.0, "background": -20.0}
    _, reason, detail = judge({"speech": loud, "background": quiet}, ("speech", "background"), -40)
    assert reason == "low_energy_background" and "background -60.0 dB" in detail
    # a stem the tasks do not need may be quiet
    assert judge({"speech": loud, "background": quiet}, ("speech",), -40)[1] is None
