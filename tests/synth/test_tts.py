"""espeak-ng through its C library: audio plus a timing for every word of the text."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from dubforge.synth.tts import espeak


@pytest.mark.parametrize(
    "text",
    [
        "Nobody believed that the baker watched the radio in the rain.",
        "Did my brother really say that the piano was by the river?",
        "Hello there.",
    ],
)
def test_every_word_is_timed_in_order(text):
    utt = espeak().synthesize(text, "en+f3", rate=170, pitch=55)
    assert utt.sample_rate == 22050
    assert utt.wave.dtype == np.float32 and np.abs(utt.wave).max() > 0.1
    assert [w.text for w in utt.words] == re.findall(r"[A-Za-z']+", text)
    assert utt.words[0].start == 0.0
    for a, b in zip(utt.words, utt.words[1:], strict=False):
        assert a.start < a.end <= b.start + 1e-3
    assert utt.words[-1].end <= len(utt.wave) / utt.sample_rate + 1e-3


def test_rate_and_voice_change_the_audio():
    text = "The captain left the lantern by the river."
    slow = espeak().synthesize(text, "en+m3", rate=120)
    fast = espeak().synthesize(text, "en+m3", rate=240)
    assert len(slow.wave) > 1.5 * len(fast.wave)
    assert slow.words[-1].end > 1.5 * fast.words[-1].end
    low = espeak().synthesize(text, "en+m3", rate=120, pitch=20)
    high = espeak().synthesize(text, "en+f3", rate=120, pitch=80)
    assert _f0(high.wave, high.sample_rate) > 1.3 * _f0(low.wave, low.sample_rate)


def _f0(wave: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch (Hz) over voiced 40 ms frames."""
    hop, f0s = int(0.04 * sr), []
    for i in range(0, len(wave) - hop, hop):
        x = wave[i : i + hop] - wave[i : i + hop].mean()
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        ac = np.correlate(x, x, "full")[hop - 1 :]
        lo, hi = sr // 400, sr // 60
        f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


def test_same_text_is_bit_identical_in_fresh_processes():
    code = (
        "import hashlib; from dubforge.synth.tts import espeak; "
        "u = espeak().synthesize('The captain left the lantern.', 'en+f2', 160, 55); "
        "print(hashlib.sha256(u.wave.tobytes()).hexdigest(), [w.end for w in u.words])"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) > 64


def test_bad_requests_raise():
    with pytest.raises(ValueError, match="empty text"):
        espeak().synthesize("   ")
    with pytest.raises(ValueError, match="no voice"):
        espeak().synthesize("hi", "xx-nonexistent")
