"""Voice-activity spans on real (espeak-ng) speech against its known word timings."""

from __future__ import annotations

import numpy as np
from scipy.signal import resample_poly

from dubforge.ingest.records import Cue
from dubforge.ingest.segment import SegmentConfig, segment
from dubforge.ingest.vad import VAD_RATE, VoiceActivity
from dubforge.synth.tts import espeak


def test_spans_match_speech_and_become_untranscribed_clips():
    rng = np.random.default_rng(0)
    texts = ["The captain left the lantern by the river.", "Why would the baker sell the piano?"]
    wave, truth, t = np.zeros(int(9 * VAD_RATE), np.float32), [], 1.0
    for text in texts:
        utt = espeak().synthesize(text, "en+m3")
        speech = resample_poly(utt.wave, VAD_RATE, utt.sample_rate).astype(np.float32)
        a = int(t * VAD_RATE)
        wave[a : a + len(speech)] += speech
        truth.append((t + utt.words[0].start, t + utt.words[-1].end))
        t += len(speech) / VAD_RATE + 1.5
    wave += 0.003 * rng.standard_normal(len(wave)).astype(np.float32)  # room tone
    spans = VoiceActivity().spans(wave)
    assert len(spans) == 2
    for (a, b), (ta, tb) in zip(spans, truth, strict=True):
        assert abs(a - ta) < 0.15 and abs(b - tb) < 0.25
    clips, _ = segment("m", [Cue(a, b, "", k) for k, (a, b) in enumerate(spans)], 9.0,
                       SegmentConfig(), transcribed=False)  # fmt: skip
    assert len(clips) == 2 and not any(c.transcribed for c in clips)


def test_silence_has_no_spans():
    assert VoiceActivity().spans(np.zeros(3 * VAD_RATE, np.float32)) == []
