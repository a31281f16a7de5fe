"""Fixtures for the metric tests: espeak-ng speech, a tiny Whisper saved locally, SyncNet
weights; everything is built offline."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.synth.tts import espeak
from tests.eval.signals import TEXT_A, TEXT_B
from tests.eval.tiny_models import make_tiny_whisper


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # the test machines are shared 2-core boxes
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def speech() -> dict[str, np.ndarray]:
    """espeak-ng utterances at 22.05 kHz: two texts (a, b) in a male (m3) and a female (f3)
    voice, plus text a spoken fast."""
    e = espeak()
    out = {
        "m3_a": e.synthesize(TEXT_A, "en+m3"),
        "m3_b": e.synthesize(TEXT_B, "en+m3"),
        "f3_a": e.synthesize(TEXT_A, "en+f3"),
        "m3_a_fast": e.synthesize(TEXT_A, "en+m3", rate=230),
    }
    assert {u.sample_rate for u in out.values()} == {22050}
    return {k: u.wave for k, u in out.items()}


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory):
    """A tiny random Whisper checkpoint folder (model + processor files)."""
    return make_tiny_whisper(tmp_path_factory.mktemp("asr") / "tiny-whisper")
