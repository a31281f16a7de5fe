"""The ingest job end to end on the synthetic corpus plus broken inputs, against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from dubforge.ingest.pipeline import format_summary, run
from dubforge.ingest.shards import read_shard
from tests.ingest.conftest import BROKEN

pytestmark = pytest.mark.slow


def _manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def test_every_input_is_accounted_for(ingested):
    root, cfg, summary = ingested
    rows = _manifest(root / "out")
    inputs = {r["input_uri"].rsplit("/", 1)[-1]: r for r in rows if r["row_type"] == "input"}
    assert len(inputs) == 2 + 4 + len(BROKEN) + 1 == summary["inputs"]
    for name, reason in BROKEN.items():
        assert (inputs[name]["status"], inputs[name]["reason"]) == ("rejected", reason), name
    assert inputs["movie_000.mp4"]["status"] == "accepted"
    assert inputs["nosubs.mp4"]["status"] == "accepted"  # segmented by voice activity: no clips
    assert not [
        r for r in rows if r["input_uri"].endswith("nosubs.mp4") and r["row_type"] == "clip"
    ]


def test_clips_match_ground_truth_energy(ingested):
    root, cfg, _ = ingested
    rows = [
        r for r in _manifest(root / "out") if r["row_type"] == "clip" and "movie_" in r["input_id"]
    ]
    checked = 0
    for movie in ("movie_000", "movie_001"):
        truth = json.loads((root / "corpus/truth" / movie / "alignment.json").read_text())
        clips = sorted((r for r in rows if r["input_id"] == movie), key=lambda r: r["clip_no"])
        assert len(clips) == len(truth["lines"])  # one clip per line: lines are 1-5 s apart
        for clip, line in zip(clips, truth["lines"], strict=True):
            assert clip["start"] <= line["start"] and clip["end"] >= line["end"] - 0.04
            if line["speech_db"] < -40:
                expected = ("rejected", "low_energy_speech")
            elif line["bg_db"] < -40:
                expected = ("rejected", "low_energy_background")
            else:
                expected = ("accepted", "")
            assert (clip["status"], clip["reason"]) == expected, (movie, line["index"])
            checked += 1
    assert checked >= 8


def test_records_have_aligned_arrays(ingested):
    root, cfg, summary = ingested
    shards = sorted((root / "out" / "shards").glob("*/*.tar"))
    samples = [s for p in shards for s in read_shard(p)]
    assert len(samples) == summary["clips_accepted"] > 0
    movies = [s for s in samples if s.meta["kind"] == "movie"]
    speech = [s for s in samples if s.meta["kind"] == "speech"]
    assert movies and len(speech) == 4
    for s in samples:
        frames = round((s.meta["end"] - s.meta["start"]) * 25)
        codes = s.arrays["speech.codes"]
        assert codes.dtype == np.int16 and codes.shape == (8, 3 * frames)  # 75 Hz = 3 x 25 fps
        assert s.meta["codec"]["frame_rate"] == 75.0 and s.meta["schema_version"] == 2
    for s in movies:
        frames = round((s.meta["end"] - s.meta["start"]) * 25)
        assert s.arrays["bg.codes"].shape == (8, 3 * frames)
        if s.meta["labels"]["scene_type"] != "narration":
            assert s.arrays["lips"].shape == (frames, 96, 96)  # 25 per second of clip
            assert s.meta["face_coverage"] >= 0.9
        assert s.meta["text"] and s.meta["transcribed"]
    got = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode())
    assert sorted(g["__key__"] for g in got) == sorted(s.key for s in samples)


def test_rerun_skips_finished_units(ingested):
    root, cfg, summary = ingested
    before = _manifest(root / "out")
    again = run(cfg)
    assert _manifest(root / "out") == before
    assert again["clips_accepted"] == summary["clips_accepted"]


def test_summary_accounts_for_hours_and_reasons(ingested):
    root, cfg, summary = ingested
    rows = _manifest(root / "out")
    written = json.loads((root / "out" / "summary.json").read_text())
    assert {**written, "this_run": None} == {**summary, "this_run": None}  # a rerun may follow
    clips = [r for r in rows if r["row_type"] == "clip"]
    rejected = sum(summary["clips_rejected"].values())
    assert summary["clips_accepted"] + rejected == len(clips)
    inputs = [r for r in rows if r["row_type"] == "input"]
    movies_in = [r["end"] for r in inputs if "movie_" in r["input_id"]]
    assert movies_in == pytest.approx([24.0, 24.0], abs=0.1)  # input rows carry their duration
    accepted_in = sum(r["end"] for r in inputs if r["status"] == "accepted")
    assert summary["hours_in"] == pytest.approx(accepted_in / 3600, abs=1e-4)
    assert 0 < summary["hours_out"] < summary["hours_in"]
    run_stats = summary["this_run"]
    assert run_stats["inputs"] == summary["inputs"] and run_stats["media_seconds_per_second"] > 0
    table = format_summary(summary)
    for reason, n in summary["clips_rejected"].items():
        assert f"  {reason}" in table and table.split(f"  {reason}")[1].split()[0] == str(n)
