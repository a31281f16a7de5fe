"""Cues -> clips: merge, split, pad, and what is rejected."""

from __future__ import annotations

from dubforge.ingest.records import Cue
from dubforge.ingest.segment import SegmentConfig, segment

CFG = SegmentConfig(min_duration=1.0, max_duration=6.0, merge_gap=0.4, pad=0.2)


def test_merge_short_neighbours_and_pad_without_overlap():
    cues = [Cue(1.0, 1.5, "Yes.", 0), Cue(1.7, 2.4, "Of course.", 1), Cue(2.5, 5.0, "Come in.", 2)]
    clips, rejected = segment("m", cues, 30.0, CFG)
    assert [(c.text, c.cues) for c in clips] == [("Yes. Of course.", (0, 1)), ("Come in.", (2,))]
    a, b = clips
    assert a.start == 0.8 and b.end == 5.2  # padded outward
    assert a.end <= b.start  # padding stops at the midpoint between neighbours
    assert a.end == 2.44 and b.start == 2.44  # the midpoint 2.45, snapped to a video frame
    assert [c.key for c in clips] == ["m/00000", "m/00001"] and not rejected


def test_split_long_cue_by_words():
    text = "one two three four five six seven eight nine ten eleven twelve"
    clips, _ = segment("m", [Cue(10.0, 25.0, text, 0)], 60.0, CFG)
    assert len(clips) == 3
    assert " ".join(c.text for c in clips) == text
    assert all(c.duration <= 6.0 + 2 * CFG.pad + 0.04 for c in clips)
    assert all(abs(c.start * 25 - round(c.start * 25)) < 1e-6 for c in clips)
    assert clips[0].start == 9.8 and clips[-1].end == 25.2


def test_cues_beyond_media_and_too_short():
    cues = [Cue(1.0, 1.3, "Hm.", 0), Cue(5.0, 7.0, "Fine.", 1), Cue(9.0, 12.0, "Cut off", 2),
            Cue(20.0, 21.0, "After the end", 3)]  # fmt: skip
    clips, rejected = segment("m", cues, 10.0, CFG)
    # "Cut off" is clamped to the media's end (9-10 s) and still long enough
    assert [(c.text, c.end) for c in clips] == [("Fine.", 7.2), ("Cut off", 10.0)]
    assert [(r.text, r.reason) for r in rejected] == [
        ("After the end", "cue_beyond_media"),
        ("Hm.", "clip_too_short"),
    ]
