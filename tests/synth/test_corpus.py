"""The synthetic corpus against its own ground truth, measured from the encoded files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
import pytest
import soundfile as sf

from dubforge.synth.config import SynthConfig
from dubforge.synth.corpus import generate

FPS = 25
HAAR = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """4 movies of 24 s (two 12 s scenes each: every scene type, both channel layouts)."""
    root = tmp_path_factory.mktemp("corpus")
    cfg = SynthConfig(
        output=str(root), movies=4, seed=11, duration=24.0, scene_seconds=12.0,
        speech_utterances=8, speech_speakers=2,
    )  # fmt: skip
    return root, generate(cfg)


def _alignment(root: Path, movie_id: str) -> dict:
    return json.loads((root / "truth" / movie_id / "alignment.json").read_text())


def _decode_gray(path: Path, w: int, h: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", str(path),
         "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w)


def _envelope(root: Path, movie_id: str) -> np.ndarray:
    speech, sr = sf.read(root / "truth" / movie_id / "speech.wav")
    mono = speech.mean(axis=1) if speech.ndim == 2 else speech
    hop = sr // FPS
    n = len(mono) // hop
    return np.sqrt(np.mean(mono[: n * hop].reshape(n, hop) ** 2, axis=1))


def _mouth_dark_pixels(gray: np.ndarray, face: dict) -> int:
    """Pixels of mouth interior (dark) in a fixed-size box under the lip line of this frame."""
    x0, y0, x1, _ = face["mouth_box"]
    scale = (face["face_box"][3] - face["face_box"][1]) / 130.0  # photo face box is 130 px tall
    y1 = y0 + (16 + 12) * scale  # the box at full opening: lips +-8 px, opening up to 10 px
    crop = gray[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1]
    return int((crop < 60).sum())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0  # a still mouth carries no signal: uncorrelated by definition
    return float(np.corrcoef(a, b)[0, 1])


def test_layout_and_counts(corpus):
    root, index = corpus
    assert index["totals"]["movies"] == 4
    assert (root / ".completed").read_text().strip() == index["digest"]
    for m in index["movies"]:
        mid = m["movie_id"]
        assert (root / "movies" / f"{mid}.mp4").is_file()
        assert (root / "movies" / f"{mid}.labels.json").is_file()
        for name in ("speech.wav", "background.wav", "mix.wav", "alignment.json"):
            assert (root / "truth" / mid / name).is_file()
    for m in index["movies"]:  # studio stems beside the picture are the truth stems
        dialogue, _ = sf.read(root / "movies" / f"{m['movie_id']}.dialogue.flac", dtype="int16")
        truth, _ = sf.read(root / "truth" / m["movie_id"] / "speech.wav", dtype="int16")
        np.testing.assert_array_equal(dialogue, truth)
        assert (root / "movies" / f"{m['movie_id']}.me.flac").is_file()
    subs = sorted(p.name for p in (root / "movies").glob("*.srt")) + sorted(
        p.name for p in (root / "movies").glob("*.vtt")
    )
    assert subs == ["movie_000.srt", "movie_002.srt", "movie_003.srt", "movie_001.vtt"]
    assert set().union(*(m["scene_types"] for m in index["movies"])) == {
        "monologue", "dialogue", "narration",
    }  # fmt: skip


def test_every_mp4_decodes_to_its_probed_duration(corpus):
    root, index = corpus
    layouts = set()
    for m in index["movies"]:
        path, al = root / m["video"], _alignment(root, m["movie_id"])
        info = ffmpeg.probe(str(path))
        v = next(s for s in info["streams"] if s["codec_type"] == "video")
        a = next(s for s in info["streams"] if s["codec_type"] == "audio")
        assert (v["codec_name"], a["codec_name"]) == ("h264", "aac")
        assert v["avg_frame_rate"] == "25/1"
        assert (v["width"], v["height"]) == (al["width"], al["height"])
        assert (a["channels"], int(a["sample_rate"])) == (al["channels"], al["sample_rate"])
        probed = float(info["format"]["duration"])
        frames = _decode_gray(path, v["width"], v["height"])
        pcm = subprocess.run(
            ["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "s16le", "-ac", "1", "-"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        audio_seconds = len(pcm) / 2 / al["sample_rate"]
        assert len(frames) == int(al["duration"] * FPS)
        assert abs(len(frames) / FPS - probed) < 0.06, (m["movie_id"], len(frames), probed)
        assert abs(audio_seconds - probed) < 0.06, (m["movie_id"], audio_seconds, probed)
        layouts.add((al["channels"], (al["width"], al["height"])))
    assert {c for c, _ in layouts} == {1, 2} and len({r for _, r in layouts}) == 4


def test_stems_sum_to_the_mix(corpus):
    root, index = corpus
    for m in index["movies"]:
        d = root / "truth" / m["movie_id"]
        speech, sr = sf.read(d / "speech.wav", dtype="int16")
        bg, _ = sf.read(d / "background.wav", dtype="int16")
        mix, _ = sf.read(d / "mix.wav", dtype="int16")
        assert speech.shape == bg.shape == mix.shape
        err = np.abs(speech.astype(np.int32) + bg.astype(np.int32) - mix.astype(np.int32))
        assert err.max() <= 1  # PCM16 quantisation step
        assert np.abs(bg).max() > 0 and np.abs(speech).max() > 1000


def test_faces_detected_in_monologue_clips(corpus):
    root, index = corpus
    detector = cv2.CascadeClassifier(HAAR)
    hit = total = 0
    for m in index["movies"]:
        al = _alignment(root, m["movie_id"])
        frames = _decode_gray(root / m["video"], al["width"], al["height"])
        for line in al["lines"]:
            if line["scene_type"] != "monologue":
                continue
            for f in range(int(line["start"] * FPS), int(line["end"] * FPS)):
                # half resolution: close-up faces stay over 60 px, detection runs 4x faster
                small = cv2.resize(frames[f], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
                found = [b * 2 for b in detector.detectMultiScale(small, 1.1, 5, minSize=(30, 30))]
                truth = al["frames"][f]["faces"][0]["face_box"]
                # a detection counts only where the face is
                hit += any(_overlaps(tuple(b), truth) for b in found)
                total += 1
    assert total > 100
    assert hit / total >= 0.95, f"face found in {hit}/{total} monologue frames"


def _overlaps(det: tuple, box: list) -> bool:
    x, y, w, h = det
    cx, cy = x + w / 2, y + h / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def test_mouth_follows_speech_in_monologue_not_in_narration(corpus):
    root, index = corpus
    mono, narr = [], []
    for m in index["movies"]:
        al = _alignment(root, m["movie_id"])
        frames = _decode_gray(root / m["video"], al["width"], al["height"])
        env = _envelope(root, m["movie_id"])
        for line in al["lines"]:
            if line["speech_db"] < -40 or line["scene_type"] == "dialogue":
                continue  # near-silent lines barely move the mouth; dialogue: two faces
            rng = range(int(line["start"] * FPS), int(line["end"] * FPS))
            opening = np.array(
                [_mouth_dark_pixels(frames[f], al["frames"][f]["faces"][0]) for f in rng]
            )
            c = _corr(opening.astype(float), env[rng.start : rng.stop])
            (mono if line["scene_type"] == "monologue" else narr).append(c)
    assert len(mono) >= 4 and len(narr) >= 2
    assert min(mono) >= 0.8, mono
    assert max(abs(c) for c in narr) < 0.3, narr


def test_dialogue_moves_only_the_speakers_mouth(corpus):
    root, index = corpus
    checked = 0
    for m in index["movies"]:
        al = _alignment(root, m["movie_id"])
        for line in al["lines"]:
            if line["scene_type"] != "dialogue" or line["speech_db"] < -40:
                continue
            frames = al["frames"][int(line["start"] * FPS) : int(line["end"] * FPS)]
            by_speaker = {f["speaker"]: [] for f in frames[0]["faces"]}
            for fr in frames:
                for face in fr["faces"]:
                    by_speaker[face["speaker"]].append(face["opening"])
            assert len(by_speaker) == 2
            assert max(by_speaker[line["speaker"]]) > 3.0
            others = [o for s, v in by_speaker.items() if s != line["speaker"] for o in v]
            assert max(others) < 0.5  # the listener's mouth stays (nearly) shut
            checked += 1
    assert checked >= 2


def _parse_cues(path: Path) -> list[tuple[float, float, str]]:
    text = path.read_text(encoding="utf-8")
    cues = []
    pat = r"(\d+):(\d\d):(\d\d)[,.](\d{3}) --> (\d+):(\d\d):(\d\d)[,.](\d{3})\n(.*?)(?:\n\n|\Z)"
    for g in re.finditer(pat, text, re.S):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(x) for x in g.groups()[:8])
        body = re.sub(r"</?i>", "", g.group(9)).replace("\n", " ").strip()
        cues.append(
            (h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, body)
        )
    return cues


def test_subtitle_cues_match_word_timings(corpus):
    root, index = corpus
    for m in index["movies"]:
        al = _alignment(root, m["movie_id"])
        cues = _parse_cues(root / m["subtitles"])
        assert len(cues) == len(al["lines"]) == m["lines"] > 0
        for (start, end, text), line in zip(cues, al["lines"], strict=True):
            words = line["words"]
            assert abs(start - words[0]["start"]) <= 0.0006
            assert abs(end - words[-1]["end"]) <= 0.0006
            assert text == line["text"]
            assert [w["text"].lower() for w in words] == re.findall(r"[a-z']+", text.lower())
            assert all(
                a["end"] <= b["start"] + 1e-3 for a, b in zip(words, words[1:], strict=False)
            )


def test_labels_and_energy_cases(corpus):
    root, index = corpus
    for k, m in enumerate(index["movies"]):
        labels = json.loads((root / "movies" / f"{m['movie_id']}.labels.json").read_text())
        al = _alignment(root, m["movie_id"])
        assert len(labels["lines"]) == len(al["lines"])
        for lab, line in zip(labels["lines"], al["lines"], strict=True):
            assert lab["scene_type"] == line["scene_type"]
            assert lab["speaker_id"] == line["speaker"]
            assert lab["gender"] in ("male", "female")
            assert lab["on_screen"] == (line["scene_type"] != "narration")
        speakers = {s["id"]: s for s in labels["speakers"]}
        assert all(
            speakers[lab["speaker_id"]]["gender"] == lab["gender"] for lab in labels["lines"]
        )
        # measured levels: one line under -40 dB background per movie, a near-silent one in odd ones
        low_bg = [ln for ln in al["lines"] if ln["bg_db"] < -40]
        quiet = [ln for ln in al["lines"] if ln["speech_db"] < -40]
        assert len(low_bg) == 1 and len(quiet) == (1 if k % 2 else 0), m["movie_id"]
        for ln in al["lines"]:
            if ln not in low_bg:
                assert -36 < ln["bg_db"] < -18, ln
            if ln not in quiet:
                assert -27 < ln["speech_db"] < -13, ln


def test_speech_corpus(corpus):
    root, index = corpus
    rows = (root / "speech" / "metadata.csv").read_text().splitlines()
    assert rows[0] == "path|speaker|text" and len(rows) - 1 == index["speech_utterances"] == 8
    speakers = set()
    for row in rows[1:]:
        path, speaker, text = row.split("|")
        wav, sr = sf.read(root / "speech" / path)
        assert sr == 22050 and wav.ndim == 1 and len(wav) > sr // 2
        assert (root / "speech" / path).with_suffix(".txt").read_text().strip() == text
        speakers.add(speaker)
    assert len(speakers) == 2


def test_rerun_is_a_no_op_and_overwrite_regenerates(corpus):
    root, index = corpus
    mp4 = root / index["movies"][0]["video"]
    before = mp4.stat().st_mtime_ns
    cfg = SynthConfig(**{**index["config"], "output": str(root)})
    assert generate(cfg)["digest"] == index["digest"]
    assert mp4.stat().st_mtime_ns == before


def test_same_seed_same_corpus_other_seed_differs(tmp_path):
    def make(name: str, seed: int) -> Path:
        cfg = SynthConfig(
            output=str(tmp_path / name), movies=1, seed=seed, duration=10.0, scene_seconds=10.0,
            speech_utterances=2, speech_speakers=1, workers=1,
        )  # fmt: skip
        generate(cfg)
        return tmp_path / name

    a, b, c = make("a", 5), make("b", 5), make("c", 6)
    for rel in ("truth/movie_000/mix.wav", "truth/movie_000/alignment.json", "movies/movie_000.srt",
                "speech/reader_00/reader_00_0001.wav"):  # fmt: skip
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "truth/movie_000/mix.wav").read_bytes() != (
        c / "truth/movie_000/mix.wav"
    ).read_bytes()


def test_corpus_to_a_remote_uri_is_staged_then_uploaded(monkeypatch):
    from pyarrow import fs as pafs

    from dubforge import storage

    remote = pafs._MockFileSystem()  # in-memory pyarrow filesystem standing for s3://
    monkeypatch.setattr(storage, "resolve", lambda path: (remote, path.split("://", 1)[1]))
    cfg = SynthConfig(
        output="s3://bucket/corpus", movies=1, seed=2, duration=8.0, scene_seconds=8.0,
        speech_utterances=1, speech_speakers=1, workers=1,
    )  # fmt: skip
    index = generate(cfg)
    listed = remote.get_file_info(pafs.FileSelector("bucket/corpus", recursive=True))
    names = {info.path.removeprefix("bucket/corpus/") for info in listed}
    assert {"movies/movie_000.mp4", "truth/movie_000/mix.wav", "corpus.json", ".completed"} <= names
    # a second run finds the finished corpus at the URI and does nothing
    monkeypatch.setattr("dubforge.synth.corpus._fresh_process_pool", None)
    assert generate(cfg)["digest"] == index["digest"]
