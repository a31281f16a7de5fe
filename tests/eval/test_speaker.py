"""SECS with resemblyzer's bundled GE2E encoder on two espeak-ng voices, and plug-in encoders."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.speaker import ResemblyzerEncoder, build_speaker_encoder, cosine, secs
from tests.eval.signals import SR


@pytest.fixture(scope="module")
def encoder() -> ResemblyzerEncoder:
    return ResemblyzerEncoder()


def test_same_clip_scores_one(speech, encoder):
    assert secs(speech["m3_a"], speech["m3_a"], SR, encoder).value == pytest.approx(1.0, abs=1e-6)


def test_other_voice_scores_lower_than_same_voice(speech, encoder):
    same_voice = secs(speech["m3_b"], speech["m3_a"], SR, encoder).value  # other sentence
    other_voice = secs(speech["f3_a"], speech["m3_a"], SR, encoder).value  # same sentence
    assert same_voice > 0.8
    assert other_voice < same_voice - 0.1


def test_embeddings_are_unit_256d(speech, encoder):
    e = encoder.embed(speech["m3_a"], SR)
    assert e.shape == (256,) and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)


def test_silence_is_not_available(speech, encoder):
    r = secs(np.zeros(SR, np.float32), speech["m3_a"], SR, encoder)
    assert r.value is None and r.reason


class _Pitchy:
    """A toy encoder: the embedding is the spectrum's centre of mass and spread."""

    def embed(self, wave: np.ndarray, sr: int) -> np.ndarray:
        mag = np.abs(np.fft.rfft(wave))
        f = np.fft.rfftfreq(len(wave), 1 / sr)
        c = (f * mag).sum() / mag.sum()
        return np.array([c, np.sqrt(((f - c) ** 2 * mag).sum() / mag.sum())])


def test_any_encoder_plugs_in(speech):
    assert secs(speech["m3_a"], speech["m3_a"], SR, _Pitchy()).value == pytest.approx(1.0)
    r = secs(speech["m3_a"], speech["m3_a"], SR, None)
    assert r.value is None and "speaker_encoder" in r.reason
    assert build_speaker_encoder("none") is None
    with pytest.raises(ValueError, match="unknown speaker encoder"):
        build_speaker_encoder("ecapa")


def test_cosine_edge_cases():
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 0.0
    assert cosine(np.array([1.0, 1.0]), np.array([-3.0, -3.0])) == -1.0
    with pytest.raises(ValueError):
        cosine(np.zeros(2), np.ones(2))
    with pytest.raises(ValueError):
        cosine(np.ones(2), np.ones(3))
