"""Every file under an input root ends as exactly one manifest row with a reason; every failure
stays with its input or clip; splits are deterministic and keep movies whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dubforge.ingest import stages
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.pipeline import format_summary, run
from dubforge.ingest.shards import read_shard
from dubforge.ingest.split import assign_split
from tests.ingest.codec_model import make_tiny_codec

SRT = (
    "1\n00:00:00,500 --> 00:00:02,500\nHello there, my friend.\n\n"
    "2\n00:00:03,000 --> 00:00:03,000\nA cue that ends where it starts.\n\n"
    "3\n00:00:04,000 --> 00:00:06,500\n<i></i>\n\n"
    "4\n00:00:07,000 --> 00:00:09,500\nAnd again, once more.\n"
)
PROBE_TIMEOUT = 3.0


def _audio(path: Path, seconds: float = 10.0) -> Path:
    codec = {".m4a": ["-c:a", "aac"], ".mp3": ["-c:a", "libmp3lame"]}.get(path.suffix.lower(), [])
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=220:sample_rate=24000:duration={seconds}",
            *codec,
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def awkward(tmp_path_factory, media_dir) -> Path:
    """A folder of the files users really send."""
    root = tmp_path_factory.mktemp("awkward")
    shutil.copy(media_dir / "good.mp4", root / "LOUD.MP4")  # uppercase extension
    (root / "LOUD.SRT").write_text(SRT)
    _audio(root / "talk.m4a")
    (root / "talk.srt").write_text(SRT)
    _audio(root / "song.MP3")
    (root / "song.srt").write_text(SRT)
    _audio(root / "nosubs.m4a", 3.0)  # audio with no text serves no task
    os.mkfifo(root / "stalled.mp4")  # a hung input: ffprobe blocks reading it
    (root / "clip.mp4").mkdir()  # a folder named like a movie
    (root / "clip.mp4" / "notes.md").write_text("not media\n")
    os.symlink("loop.mkv", root / "loop.mkv")  # a symlink to itself
    (root / "orphan.srt").write_text(SRT)
    _audio(root / "lone.dialogue.wav", 2.0)
    (root / "fake.mp4").write_text("a text file named like a movie\n" * 40)
    shutil.copy(media_dir / "good.mp4", root / "badsubs.mp4")
    (root / "badsubs.srt").write_bytes(bytes(range(256)) * 8)  # unreadable subtitle bytes
    (root / "README").write_text("plain text without an extension\n")  # probed: not media
    return root


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> Path:
    return make_tiny_codec(tmp_path_factory.mktemp("codec") / "codec", "encodec")


def _cfg(root: Path, out: Path, codec: Path, **kw) -> IngestConfig:
    return IngestConfig(
        input=[str(root)],
        output=str(out),
        codec={"name_or_path": str(codec), "mel": "vocos_24k"},
        faces={"enabled": False},
        timeouts={"probe": PROBE_TIMEOUT},
        **kw,
    )


def _manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


@pytest.fixture(scope="module")
def awkward_run(awkward, codec, tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("awkward_out")
    t0 = time.perf_counter()
    summary = run(_cfg(awkward, out, codec), local=True)
    return out, summary, time.perf_counter() - t0


def test_every_file_has_exactly_one_row_with_its_reason(awkward, awkward_run):
    out, summary, _ = awkward_run
    rows = _manifest(out)
    per_file = [r for r in rows if r["row_type"] in ("file", "input")]
    walked = sorted(str(Path(d) / f) for d, _, files in os.walk(awkward) for f in files)
    assert sorted(r["input_uri"] for r in per_file) == walked
    got = {r["input_uri"].removeprefix(f"{awkward}/"): (r["status"], r["reason"]) for r in per_file}
    assert got == {
        "LOUD.MP4": ("accepted", ""),
        "LOUD.SRT": ("accepted", "sidecar"),
        "talk.m4a": ("accepted", ""),
        "talk.srt": ("accepted", "sidecar"),
        "song.MP3": ("accepted", ""),
        "song.srt": ("accepted", "sidecar"),
        "nosubs.m4a": ("rejected", "no_transcript"),
        "stalled.mp4": ("rejected", "timeout"),
        "clip.mp4/notes.md": ("rejected", "not_media"),
        "loop.mkv": ("rejected", "broken_link"),
        "orphan.srt": ("rejected", "orphan_subtitles"),
        "lone.dialogue.wav": ("rejected", "lone_stem"),
        "fake.mp4": ("rejected", "not_media"),
        "badsubs.mp4": ("accepted", ""),
        "badsubs.srt": ("accepted", "sidecar"),
        "README": ("rejected", "not_media"),
    }
    assert all(r["detail"] for r in per_file if r["status"] == "rejected")
    assert summary["files"] == len(walked)
    print(format_summary(summary))


def test_a_hung_input_times_out_within_the_limit(awkward_run):
    out, _, wall = awkward_run
    (row,) = [r for r in _manifest(out) if r["input_uri"].endswith("stalled.mp4")]
    assert "took over 3 s" in row["detail"]
    assert wall < 120  # the FIFO cost its probe timeout, not the job


def test_audio_only_media_become_tts_clips(awkward_run):
    out, summary, _ = awkward_run
    rows = _manifest(out)
    talk = [r for r in rows if r["input_id"] == "talk"]
    (inp,) = [r for r in talk if r["row_type"] == "input"]
    assert inp["kind"] == "audio" and "video tasks" in inp["detail"]
    clips = [r for r in talk if r["row_type"] == "clip" and r["status"] == "accepted"]
    assert len(clips) == 2
    samples = {s.key: s for p in sorted((out / "shards").glob("*/*.tar")) for s in read_shard(p)}
    rec = samples["talk/00000"]
    assert rec.meta["kind"] == "audio" and rec.meta["tasks"] == ["tts"]  # no lips: no v2s
    assert "lips" not in rec.arrays and "speech.mel" in rec.arrays
    assert rec.meta["text"] == "Hello there, my friend."
    # the dropped cues are rows too, each with its reason
    cues = sorted((r["reason"], r["detail"][:6]) for r in talk if r["row_type"] == "cue")
    assert cues == [("empty_text", "cue 2:"), ("end_before_start", "cue 1:")]
    assert summary["cues_dropped"]["empty_text"] == 3  # talk, song and the movie's


def test_unreadable_subtitles_fall_back_to_voice_activity(awkward_run):
    out, _, _ = awkward_run
    (inp,) = [r for r in _manifest(out) if r["input_id"] == "badsubs" and r["row_type"] == "input"]
    assert inp["status"] == "accepted" and "segmented by voice activity" in inp["detail"]


def test_reconciliation_fails_loudly_on_an_unaccounted_file(awkward, codec, tmp_path, monkeypatch):
    from dubforge.ingest import pipeline

    real = pipeline.file_rows
    monkeypatch.setattr(pipeline, "file_rows", lambda found, splits: real(found, splits)[1:])
    with pytest.raises(RuntimeError, match="could not account for 1 file"):
        run(_cfg(awkward, tmp_path / "out", codec), local=True)


@pytest.fixture(scope="module")
def two_movies(tmp_path_factory, media_dir) -> Path:
    root = tmp_path_factory.mktemp("two")
    for name in ("a", "b"):
        shutil.copy(media_dir / "good.mp4", root / f"{name}.mp4")
        (root / f"{name}.srt").write_text(SRT)
        _audio(root / f"{name}.dialogue.wav", 6.0)
        _audio(root / f"{name}.me.wav", 6.0)
    return root


def _records(out: Path) -> dict:
    return {s.key: s for p in sorted((out / "shards").glob("*/*.tar")) for s in read_shard(p)}


def _fail_for_b(self, row, *args, **kwargs):
    if row["unit"] == "b":
        raise RuntimeError("injected fault")
    return _real_tokenize(self, row, *args, **kwargs)


_real_tokenize = stages.Tokenize._one


def test_a_stage_fault_stays_with_its_unit(two_movies, codec, tmp_path, monkeypatch):
    clean = _cfg(two_movies, tmp_path / "clean", codec)
    run(clean, local=True)
    monkeypatch.setattr(stages.Tokenize, "_one", _fail_for_b)
    faulty = _cfg(two_movies, tmp_path / "faulty", codec, max_error_fraction=0.5)
    run(faulty, local=True)
    rows = [r for r in _manifest(tmp_path / "faulty") if r["row_type"] == "clip"]
    b = [(r["status"], r["reason"]) for r in rows if r["input_id"] == "b"]
    assert b == [("rejected", "tokenize_error")]  # its one clip (the other cue is past 6 s)
    assert all("RuntimeError: injected fault" in r["detail"] for r in rows if r["input_id"] == "b")
    before, after = _records(tmp_path / "clean"), _records(tmp_path / "faulty")
    assert sorted(after) == ["a/00000"] and sorted(before) == ["a/00000", "b/00000"]
    for key, s in after.items():
        assert s.meta == before[key].meta
        assert sorted(s.arrays) == sorted(before[key].arrays)
        assert all((s.arrays[k] == before[key].arrays[k]).all() for k in s.arrays)


def test_the_error_budget_stops_a_systematic_failure(two_movies, codec, tmp_path, monkeypatch):
    monkeypatch.setattr(stages.Tokenize, "_one", _fail_for_b)
    cfg = _cfg(two_movies, tmp_path / "out", codec, max_error_fraction=0.0)
    with pytest.raises(RuntimeError, match=r"1 of 2 units failed with unexpected errors"):
        run(cfg, local=True)


def test_splits_are_deterministic_and_keep_ids_whole():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    ids = [f"movie:m{i:04d}" for i in range(2000)]
    first = [assign_split(i, fractions=fractions, pinned={}, salt="") for i in ids]
    again = [assign_split(i, fractions=fractions, pinned={}, salt="") for i in ids]
    assert first == again
    # sha256 of the id: the same on every machine and Python, so fixed here
    assert first[:8] == ["test", "train", "train", "val", "train", "train", "train", "train"]
    counts = {s: first.count(s) for s in ("train", "val", "test")}
    assert 1500 < counts["train"] < 1700 and 140 < counts["val"] < 260
    pinned = {"val": ["m0001"], "test": ["movie:m0002"]}
    assert assign_split("movie:m0001", fractions=fractions, pinned=pinned, salt="") == "val"
    assert assign_split("movie:m0002", fractions=fractions, pinned=pinned, salt="") == "test"
    salted = [assign_split(i, fractions=fractions, pinned={}, salt="x") for i in ids]
    assert salted != first


def test_a_movie_never_spans_two_splits(two_movies, codec, tmp_path):
    cfg = _cfg(
        two_movies,
        tmp_path / "out",
        codec,
        split={"fractions": {"train": 0.5, "val": 0.5, "test": 0.0}, "pinned": {"val": ["b"]}},
    )
    summary = run(cfg, local=True)
    rows = _manifest(tmp_path / "out")
    by_movie: dict[str, set] = {}
    for r in rows:
        if r["row_type"] != "file" or r["input_id"]:
            by_movie.setdefault(r["input_id"], set()).add(r["split"])
    assert by_movie["b"] == {"val"} and len(by_movie["a"]) == 1
    assert sorted(p.parent.name for p in (tmp_path / "out" / "shards").glob("*/b-*.tar")) == ["val"]
    assert summary["clips_by_split"] == {"train": 1, "val": 1, "test": 0}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_stage_fault_in_the_ray_pipeline_stays_with_its_unit(two_movies, codec, tmp_path):
    import ray

    clean = _cfg(two_movies, tmp_path / "clean", codec)
    run(clean, local=True)
    repo = str(Path(__file__).resolve().parents[2])  # so the workers can import tests.ingest
    env = {
        "worker_process_setup_hook": "tests.ingest.faults.tokenize_fails_for_b",
        "env_vars": {"PYTHONPATH": repo},
    }
    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env=env)
    try:
        run(_cfg(two_movies, tmp_path / "faulty", codec, max_error_fraction=0.5))
    finally:
        ray.shutdown()
    rows = [r for r in _manifest(tmp_path / "faulty") if r["row_type"] == "clip"]
    assert [(r["input_id"], r["status"], r["reason"]) for r in rows] == [
        ("a", "accepted", ""),
        ("b", "rejected", "tokenize_error"),
    ]
    before, after = _records(tmp_path / "clean"), _records(tmp_path / "faulty")
    assert sorted(after) == ["a/00000"]
    assert after["a/00000"].meta == before["a/00000"].meta
