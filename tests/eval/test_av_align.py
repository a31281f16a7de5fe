"""AV-Align on tone bursts and a square that jumps at chosen video frames."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.av_align import audio_peaks, av_align, flow_trajectory, peak_iou, video_peaks
from tests.eval.signals import SR, bursts, jumping_square

FPS = 25.0
ONSETS = [0.2, 0.6, 1.0, 1.32, 1.72]


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    return jumping_square([round(t * FPS) for t in ONSETS], 50)


def test_peaks_are_found_where_they_were_made(video):
    np.testing.assert_allclose(video_peaks(video, FPS), ONSETS, atol=1e-9)
    a = audio_peaks(bursts(ONSETS, 2.0), SR)
    assert len(a) == len(ONSETS)
    assert np.all(np.abs(a - ONSETS) < 1 / FPS)


def test_aligned_audio_and_video_score_one(video):
    r = av_align(bursts(ONSETS, 2.0), SR, video, FPS)
    assert r.value == 1.0 and r.details == {"audio_peaks": 5, "video_peaks": 5}


def test_shifting_the_audio_lowers_the_score(video):
    scores = [
        av_align(bursts([t + s for t in ONSETS], 2.2), SR, video, FPS).value for s in (0.0, 0.2)
    ]
    assert scores[0] == 1.0 and scores[1] < 0.2


def test_missing_or_extra_peaks_lower_the_score(video):
    fewer = av_align(bursts(ONSETS[:3], 2.0), SR, video, FPS).value
    assert fewer == pytest.approx(3 / 5)


def test_iou_counts_matches_inside_the_open_window():
    assert peak_iou([0.10, 0.50, 0.90], [0.12, 0.55, 2.0], 0.04) == pytest.approx(1 / 5)
    assert peak_iou([0.5], [0.75], 0.25) == 0.0  # exactly on the edge: not matched
    assert peak_iou([0.5], [0.75], 0.2500001) == 1.0
    with pytest.raises(ValueError):
        peak_iou([], [], 0.04)


def test_still_video_has_no_motion_peaks():
    still = np.full((10, 32, 32, 3), 90, np.uint8)
    assert np.all(flow_trajectory(still) == 0.0) and video_peaks(still, FPS).size == 0
    r = av_align(np.zeros(SR, np.float32), SR, still, FPS)
    assert r.value is None and "no audio onsets" in r.reason


def test_grey_frames_work_and_bad_shapes_fail(video):
    grey = video[..., 0]
    np.testing.assert_allclose(video_peaks(grey, FPS), ONSETS, atol=1e-9)
    with pytest.raises(ValueError, match="video frames"):
        video_peaks(video[..., :2], FPS)
    with pytest.raises(ValueError, match="at least 2"):
        flow_trajectory(video[:1])
    with pytest.raises(ValueError, match="fps"):
        av_align(bursts(ONSETS, 2.0), SR, video, 0)
