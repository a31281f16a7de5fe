"""The face and lip crop stage on the synthetic corpus, with real MediaPipe models.

Ground truth comes from the generator's alignment.json: per frame the face boxes and which
speaker each face belongs to. Movie 0 is a monologue then a dialogue, movie 1 a dialogue then
narration, movie 2 narration then a monologue; in dialogue both faces are in shot and only the
speaker's mouth moves, in narration the visible mouth stays shut.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from dubforge.ingest.faces import (
    LIP_SPAN,
    FaceTrack,
    FaceTracker,
    correlation,
    lip_matrix,
    speech_envelope,
)
from dubforge.synth.config import SynthConfig
from dubforge.synth.corpus import generate

FPS = 25
AUDIBLE_DB = -40.0


@dataclass(frozen=True)
class Clip:
    """One line of a movie: decoded frames and speech, the truth of each frame, the result."""

    movie: int
    line: dict
    frames: np.ndarray  # uint8 [f, h, w, 3]
    speech: np.ndarray  # float [n] mono
    sample_rate: int
    truth: list[dict]  # alignment "frames" entries of the clip's frames
    result: FaceTrack


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("face_corpus")
    generate(
        SynthConfig(output=str(root), movies=3, seed=11, duration=24.0, scene_seconds=12.0,
                    speech_utterances=0, speech_speakers=1)
    )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def tracker():
    t = FaceTracker()
    yield t
    t.close()


def _alignment(root: Path, movie: int) -> dict:
    return json.loads((root / "truth" / f"movie_{movie:03d}" / "alignment.json").read_text())


def _decode(root: Path, movie: int, align: dict, first: int, count: int) -> np.ndarray:
    """Frames [first, first + count) of a movie as uint8 RGB [f, h, w, 3]."""
    w, h = align["width"], align["height"]
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{first / FPS:.3f}",
         "-i", str(root / "movies" / f"movie_{movie:03d}.mp4"), "-frames:v", str(count),
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    assert len(frames) == count, f"decoded {len(frames)} of {count} frames"
    return frames


def _speech(root: Path, movie: int, first: int, count: int) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(root / "truth" / f"movie_{movie:03d}" / "speech.wav", dtype="float32")
    mono = wave.mean(axis=1) if wave.ndim == 2 else wave
    a = round(first / FPS * sr)
    return mono[a : a + round(count / FPS * sr)], sr


@pytest.fixture(scope="session")
def clips(corpus, tracker) -> list[Clip]:
    """Every monologue and dialogue line of the three movies and movie 2's narration, tracked
    once (~800 frames)."""
    out = []
    for movie in range(3):
        align = _alignment(corpus, movie)
        for line in align["lines"]:
            if line["scene_type"] == "narration" and movie != 2:
                continue
            first = round(line["start"] * FPS)
            count = round(line["end"] * FPS) - first
            frames = _decode(corpus, movie, align, first, count)
            speech, sr = _speech(corpus, movie, first, count)
            result = tracker.track(frames, speech, sr)
            truth = align["frames"][first : first + count]
            out.append(Clip(movie, line, frames, speech, sr, truth, result))
    return out


def _of(clips: list[Clip], scene_type: str) -> list[Clip]:
    picked = [c for c in clips if c.line["scene_type"] == scene_type]
    assert picked, f"the corpus has no {scene_type} lines"
    return picked


def _iou(a: np.ndarray, b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_monologue_coverage_and_shapes(clips):
    for c in _of(clips, "monologue"):
        r, f = c.result, len(c.frames)
        assert r.coverage >= 0.95, (c.movie, c.line["index"], r.coverage)
        assert r.face.shape == (f, 224, 224, 3) and r.face.dtype == np.uint8
        assert r.lips.shape == (f, 96, 96) and r.lips.dtype == np.uint8
        assert r.boxes.shape == (f, 4) and r.boxes.dtype == np.float32
        assert r.mouth_open.shape == (f,) and r.mouth_open.dtype == np.float32
        assert r.n_faces == 1
        assert r.face.mean() > 40 and r.lips.std() > 10  # real picture, not padding


def test_monologue_boxes_overlap_truth(clips):
    for c in _of(clips, "monologue"):
        for k in np.flatnonzero(c.result.found):
            gt = c.truth[k]["faces"][0]["face_box"]
            assert _iou(c.result.boxes[k], gt) >= 0.5, (c.movie, c.line["index"], k)


def test_mouth_opening_follows_speech(clips):
    for c in _of(clips, "monologue"):
        if c.line["speech_db"] <= AUDIBLE_DB:
            continue
        r = c.result
        env = speech_envelope(c.speech, c.sample_rate, len(c.frames))  # [f] RMS per 40 ms
        corr = correlation(r.mouth_open[r.found].astype(np.float64), env[r.found])
        assert corr >= 0.6, (c.movie, c.line["index"], corr)
        assert r.speaker_score >= 0.6, (c.movie, c.line["index"], r.speaker_score)


def test_dialogue_picks_the_speaker(clips):
    dialogue = [c for c in _of(clips, "dialogue") if c.line["speech_db"] > AUDIBLE_DB]
    assert {c.movie for c in dialogue} == {0, 1}  # every dialogue line of two movies
    for c in dialogue:
        r = c.result
        assert r.n_faces == 2 and r.coverage >= 0.95, (c.movie, c.line["index"])
        for k in np.flatnonzero(r.found):
            x0, y0, x1, y1 = r.boxes[k]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            (face,) = [f for f in c.truth[k]["faces"] if f["speaker"] == c.line["speaker"]]
            bx0, by0, bx1, by1 = face["face_box"]
            assert bx0 <= cx <= bx1 and by0 <= cy <= by1, (c.movie, c.line["index"], k)


def test_narration_has_no_visible_speaker(clips):
    for c in _of(clips, "narration"):
        if c.line["speech_db"] > AUDIBLE_DB:
            assert c.result.coverage >= 0.95
            assert c.result.speaker_score < 0.4, (c.line["index"], c.result.speaker_score)


def test_clip_without_faces(tracker):
    frames = np.full((20, 120, 160, 3), 128, np.uint8)
    r = tracker.track(frames, np.zeros(16000 * 20 // FPS, np.float32), 16000)
    assert r.coverage == 0.0 and r.n_faces == 0 and r.speaker_score == 0.0
    assert r.face.shape == (20, 224, 224, 3) and not r.face.any()
    assert r.lips.shape == (20, 96, 96) and not r.lips.any()
    assert np.isnan(r.boxes).all() and np.isnan(r.mouth_open).all()


def test_missing_frames_reuse_the_nearest_crop(clips, tracker):
    c = _of(clips, "monologue")[0]
    frames = c.frames[:20].copy()
    frames[5:10] = 128  # the face is gone for frames 5-9
    r = tracker.track(frames, c.speech[: round(20 / FPS * c.sample_rate)], c.sample_rate)
    assert r.coverage == pytest.approx(15 / 20)
    assert list(np.flatnonzero(~r.found)) == [5, 6, 7, 8, 9]
    assert np.isnan(r.mouth_open[5:10]).all() and not np.isnan(r.mouth_open[r.found]).any()
    for k, nearest in ((5, 4), (7, 4), (8, 10), (9, 10)):
        np.testing.assert_array_equal(r.face[k], r.face[nearest])
        np.testing.assert_array_equal(r.lips[k], r.lips[nearest])
    assert r.n_faces == 1  # one track across the gap


def test_small_face_found(clips, tracker):
    """A face ~50 px wide, below what the mesh's own detector finds reliably."""
    c = _of(clips, "monologue")[-1]
    h, w = c.frames.shape[1:3]
    sh, sw = h // 4, w // 4
    small = np.full((40, h, w, 3), 90, np.uint8)
    for i in range(40):
        small[i, 20 : 20 + sh, 30 : 30 + sw] = cv2.resize(
            c.frames[i], (sw, sh), interpolation=cv2.INTER_AREA
        )
    r = tracker.track(small, c.speech[: round(40 / FPS * c.sample_rate)], c.sample_rate)
    assert r.coverage >= 0.9, r.coverage
    width = np.nanmedian(r.boxes[:, 2] - r.boxes[:, 0])
    assert 30 <= width <= 70, width


def test_batch_call_adds_columns(clips, tracker):
    c = _of(clips, "monologue")[0]
    speech = c.speech[: round(30 / FPS * c.sample_rate)]
    grey = np.full((30, *c.frames.shape[1:]), 128, np.uint8)
    batch = {
        "id": np.array(["talking", "grey"]),
        "frames": np.stack([c.frames[:30], grey]),
        "speech": np.stack([speech, np.zeros_like(speech)]),
        "sample_rate": np.array([c.sample_rate, c.sample_rate]),
    }
    out = tracker(batch)
    assert list(out["id"]) == ["talking", "grey"]
    assert out["face"].shape == (2, 30, 224, 224, 3) and out["face"].dtype == np.uint8
    assert out["lips"].shape == (2, 30, 96, 96) and out["lips"].dtype == np.uint8
    assert out["face_coverage"][0] >= 0.95 and out["face_coverage"][1] == 0.0
    assert list(out["n_faces"]) == [1, 0]
    assert out["speaker_score"].shape == (2,)


def test_batch_with_clips_of_different_lengths(clips, tracker):
    c = _of(clips, "monologue")[0]
    frames = [c.frames[:10], c.frames[:14]]
    speech = [c.speech[: round(n / FPS * c.sample_rate)] for n in (10, 14)]
    out = tracker({"frames": frames, "speech": speech, "sample_rate": [c.sample_rate] * 2})
    assert [x.shape[0] for x in out["face"]] == [10, 14]
    assert [x.shape[0] for x in out["lips"]] == [10, 14]


def test_bad_inputs_name_the_fix(tracker):
    with pytest.raises(ValueError, match="uint8 RGB"):
        tracker.track(np.zeros((5, 32, 32, 3), np.float32), np.zeros(100), 16000)
    with pytest.raises(ValueError, match="mono"):
        tracker.track(np.zeros((5, 32, 32, 3), np.uint8), np.zeros((100, 2)), 16000)
    with pytest.raises(ValueError, match="'speech' column"):
        tracker({"frames": [np.zeros((5, 32, 32, 3), np.uint8)], "sample_rate": [16000]})


def test_lip_matrix_levels_the_mouth_corners():
    left, right = np.array([100.0, 100.0]), np.array([180.0, 140.0])  # tilted down to the right
    angle = math.degrees(math.atan2(*(right - left)[::-1]))
    m = lip_matrix((left + right) / 2, angle, iod=120.0, size=96)
    (lx, ly), (rx, ry) = (m @ np.array([*p, 1.0]) for p in (left, right))
    assert ly == pytest.approx(48.0) and ry == pytest.approx(48.0)  # level, centred
    assert rx - lx == pytest.approx(np.hypot(80, 40) * 96 / (LIP_SPAN * 120.0))
    assert lx < 48 < rx  # not mirrored


def test_speech_envelope_is_rms_per_frame():
    sr = 16000
    hop = sr // FPS
    levels = np.array([0.0, 0.5, 0.1, 0.25])
    speech = np.repeat(levels, hop) * np.where(np.arange(4 * hop) % 2, 1.0, -1.0)
    env = speech_envelope(speech, sr, 6)  # two frames past the end
    np.testing.assert_allclose(env, [*levels, 0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("keep", [True, False])
def test_faceless_clip_kept_or_rejected_by_config(keep):
    from dubforge.ingest.config import IngestConfig
    from dubforge.ingest.stages import Faces, _batch, rows_of

    cfg = IngestConfig(input=["x"], output="y", codec={"name_or_path": "c"},
                       faces={"keep_faceless": keep})  # fmt: skip
    row = {"status": "pending", "clip": {"clip_no": 0}, "reason": "", "detail": "", "kind": "movie",
           "frames": np.full((10, 120, 160, 3), 90, np.uint8),
           "speech": np.zeros(9600, np.float32)}  # fmt: skip
    (out,) = rows_of(Faces(cfg, 24000)(_batch([row])))
    assert out["face_coverage"] == 0.0 and "lips" not in out and "frames" not in out
    if keep:
        assert out["status"] == "pending"
    else:
        assert (out["status"], out["reason"]) == ("rejected", "low_face_coverage")
