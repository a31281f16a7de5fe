"""EvalConfig: frozen, unknown keys rejected, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dubforge.eval.config import EvalConfig


def test_defaults_need_no_model_files():
    cfg = EvalConfig()
    assert cfg.asr_path is None and cfg.syncnet_path is None
    assert cfg.speaker_encoder == "resemblyzer" and cfg.gpe_threshold == 0.2
    assert cfg.mcd_definition == "v2c" and cfg.dnsmos is True  # the papers' protocol


def test_paths_parse_and_config_is_frozen():
    cfg = EvalConfig(asr_path="/models/whisper", syncnet_path="/models/syncnet_v2.model")
    assert cfg.asr_path == Path("/models/whisper")
    with pytest.raises(ValidationError):
        cfg.asr_path = None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("asr_pth", "/x", "asr_pth"),
        ("speaker_encoder", "ecapa", "resemblyzer"),
        ("f0_method", "crepe", "f0_method"),
        ("gpe_threshold", 1.5, "gpe_threshold"),
        ("activity_detector", "webrtc", "activity_detector"),
        ("mcd_definition", "pymcd", "mcd_definition"),
        ("mcd_v2c_compat", True, "mcd_v2c_compat"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValidationError, match=message):
        EvalConfig(**{field: value})
