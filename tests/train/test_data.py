"""Training data: shard discovery and checks, record decoding and rejection, frame budgets, and
the Ray Data pipeline skipping a corrupt shard with a count instead of crashing."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pandas as pd
import pytest

from dubforge.config import ConfigError
from dubforge.ingest.shards import Sample, ShardWriter
from dubforge.model.spaces import MelSpace
from dubforge.schema import SCHEMA_VERSION, ClipRecord
from dubforge.train.config import CurriculumConfig, DataSection
from dubforge.train.data import (
    DataCounters,
    FrameBatcher,
    bucket_edges,
    build_dataset,
    check_shard,
    crop,
    decode_rows,
    expand,
    micro_batches,
    plan_stage,
)
from tests.train.conftest import debug_dict
from tests.train.corpus import make_clip

STEMS = {"speech": "speech.mel", "background": "bg.mel"}


def _rows(sample: Sample) -> dict:
    """A raw row as read_webdataset(decoder=None) gives it."""
    row = {"__key__": sample.key, "__url__": "x.tar"}
    for name, data in sample.members():
        row[name.split(".", 1)[1]] = data
    return row


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_expand_globs_and_folders(train_shards):
    movies = expand(f"{train_shards}/train/movies/*.tar")
    assert [p.rsplit("/", 1)[1] for p in movies] == [f"clip-0000{i}.tar" for i in range(3)]
    assert len(expand(f"{train_shards}/train")) == 6  # a folder: every shard under it
    assert len(expand(str(train_shards))) == 8  # and val's two
    assert expand(f"{train_shards}/nothing/*.tar") == []
    assert expand(f"file://{train_shards}/train/speech/spk-00000.tar") == [
        f"{train_shards}/train/speech/spk-00000.tar"
    ]


def test_check_shard_finds_truncated_and_foreign_files(train_shards, tmp_path):
    root = _copy(train_shards, tmp_path / "s")
    good = root / "train" / "movies" / "clip-00000.tar"
    assert check_shard(str(good)).problem == ""
    assert check_shard(str(good)).samples == 4
    cut = root / "train" / "movies" / "clip-00001.tar"
    cut.write_bytes(cut.read_bytes()[:5000])
    assert check_shard(str(cut)).problem.startswith("truncated: index says")
    foreign = root / "train" / "movies" / "clip-00002.tar"
    foreign.write_text("not a tar\n" * 100)
    assert "no ustar header" in check_shard(str(foreign)).problem
    (root / "train" / "movies" / "empty.tar").write_bytes(b"")
    assert check_shard(str(root / "train" / "movies" / "empty.tar")).problem == "empty file"


def test_plan_skips_bad_shards_up_to_the_threshold(train_shards, tmp_path):
    root = _copy(train_shards, tmp_path / "s")
    cut = root / "train" / "movies" / "clip-00001.tar"
    cut.write_bytes(cut.read_bytes()[:5000])
    cfg = CurriculumConfig.model_validate(debug_dict(shards=str(root)))
    with pytest.raises(ConfigError, match=r"stage 'v2a': 1 of 6 shards are bad"):
        plan_stage(cfg, cfg.stages[1])  # v2a: every shard, 1 of 6 bad
    cfg = CurriculumConfig.model_validate(
        debug_dict(shards=str(root), data={"max_bad_shards": 0.5})
    )
    plan = plan_stage(cfg, cfg.stages[1])
    assert plan.shards == 5 and [c.uri for c in plan.bad] == [str(cut)]
    assert plan.sources[0].samples == 20


def test_replay_weights_become_repeat_factors(train_shards):
    cfg = CurriculumConfig.model_validate(debug_dict(shards=str(train_shards)))
    plan = plan_stage(cfg, cfg.stages[2])  # all shards weight 1 + replay of tts (speech) weight 1
    by = {s.pattern.rsplit("/", 1)[1]: s for s in plan.sources}
    assert by["*.tar"].samples == 24 and by["*speech*.tar"].samples == 12
    # each half of an epoch of 36: all 24 x 0.75, speech 12 x 1.5
    assert by["*.tar"].repeat == pytest.approx(0.75)
    assert by["*speech*.tar"].repeat == pytest.approx(1.5)
    plan = plan_stage(cfg, cfg.stages[3])  # all weight 2 + replay(v2a_tts) weight 1
    by = {s.pattern.rsplit("/", 1)[1]: s for s in plan.sources}
    # all: 2/3 + 1/3 * 1/2 = 5/6 of 36 = 30 -> 30/24; speech: 1/6 of 36 = 6 -> 6/12
    assert by["*.tar"].repeat == pytest.approx(30 / 24)
    assert by["*speech*.tar"].repeat == pytest.approx(6 / 12)
    assert plan.epoch_samples == pytest.approx(36)
    with pytest.raises(ConfigError, match=r"stages.0.data.0.shards: .* matches no .tar shard"):
        plan_stage(CurriculumConfig.model_validate(debug_dict(shards="/nonexistent")),
                   cfg.stages[0])  # fmt: skip


def test_decode_rows_rejects_bad_records_without_losing_them():
    rng = np.random.default_rng(0)
    good = make_clip("a/00000", 1.2, "hello there", rng, video=True)
    old = make_clip("a/00001", 1.0, "hi", rng, video=False)
    old.meta["schema_version"] = 99
    broken = _rows(make_clip("a/00002", 1.0, "hi", rng, video=False))
    broken["speech.mel.npy"] = b"\x93NUMPY garbage"
    batch = pd.DataFrame([_rows(good), _rows(old), broken, {"__key__": "a/00003"}])
    out = decode_rows(batch, STEMS, 100.0, repeat=1.0, seed=0)
    assert list(out["key"]) == ["a/00000", "a/00001", "a/00002", "a/00003"]
    assert out["frames"][0] == round(1.2 * 93.75) and out["error"][0] == ""
    assert "schema_version 99" in out["error"][1]
    assert out["error"][2].startswith("ValueError") or out["error"][2] != ""
    assert "no json member" in out["error"][3]
    meta = json.loads(out["meta"][0])
    assert meta["key"] == "a/00000"


def test_repeat_factor_keeps_expected_share():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame([_rows(make_clip(f"a/{i:05d}", 1.0, "x", rng, False)) for i in range(400)])
    assert len(decode_rows(rows, STEMS, 100.0, repeat=2.0, seed=0)) == 800
    n = len(decode_rows(rows, STEMS, 100.0, repeat=0.25, seed=0))
    assert 60 <= n <= 140  # binomial(400, 0.25): mean 100, sd 8.7


def test_frame_batcher_keeps_budget_and_accounts_for_every_row():
    rng = np.random.default_rng(1)
    clips = [make_clip(f"m/{i:05d}", s, "the night", rng, video=i % 2 == 0)
             for i, s in enumerate([1.0, 2.0, 1.2, 3.0, 1.6, 1.0, 2.0, 1.2] * 3)]  # fmt: skip
    df = decode_rows(pd.DataFrame([_rows(c) for c in clips]), STEMS, 100.0, 1.0, 0)
    df.loc[3, "error"] = "ValueError: broken"
    data = DataSection(frame_budget=600, max_samples=3, buckets=3, max_frames=250)
    counters = DataCounters()
    batcher = FrameBatcher(MelSpace(), {"v2a": 1.0, "tts": 1.0}, data, rng, counters)
    batches = list(micro_batches(df.to_dict("records"), batcher))
    items = [it for b in batches for it in b]
    assert counters.rows == 24 and counters.bad_records == 1
    assert len(items) + counters.bad_records + counters.no_task == 24
    for b in batches:
        assert len(b) <= 3
        if len(b) > 1:
            assert len(b) * max(it.cost for it in b) <= 600
    tasks = {it.record[0].key: it.task for it in items}
    assert all(tasks[c.key] == "tts" for c in clips[1::2] if c.key in tasks)  # no video: tts
    assert counters.cropped == 2 and max(it.frames for it in items) == 250  # 3 s clips 1 bad


def test_crop_cuts_every_array_to_the_same_window():
    rng = np.random.default_rng(2)
    clip = make_clip("m/00000", 4.0, "words", rng, video=True)
    space = MelSpace()
    seconds = 200 / space.frame_rate
    meta, arrays = crop((ClipRecord.from_dict(clip.meta), clip.arrays), space, 200, rng)
    mel_frames = int(seconds * 93.75 + 1e-6)  # the record's vocos_24k mel
    assert arrays["speech.mel"].shape == (100, mel_frames) == arrays["bg.mel"].shape
    assert arrays["lips"].shape[0] == int(seconds * 25 + 1e-6)
    assert arrays["face"].shape[0] == int(seconds * 5 + 1e-6)
    assert meta.end - meta.start == pytest.approx(seconds)
    assert (meta.start * 25) == pytest.approx(round(meta.start * 25))


def test_bucket_edges_are_geometric_and_end_at_max():
    assert bucket_edges(3000, 1) == [3000]
    edges = bucket_edges(3000, 8)
    assert edges[-1] == 3000 and edges == sorted(edges) and len(edges) == 8


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_pipeline_skips_a_corrupt_shard_and_counts_bad_records(train_shards, tmp_path,
                                                                   local_ray):  # fmt: skip
    root = _copy(train_shards, tmp_path / "s")
    # a shard whose index matches but whose tar breaks mid-way: only Ray's read finds it
    bad = root / "train" / "speech" / "spk-00002.tar"
    with tarfile.open(bad) as tar:
        offset = tar.getmembers()[4].offset  # the header of the second sample's first member
    data = bytearray(bad.read_bytes())
    data[offset : offset + 512] = b"\xff" * 512
    bad.write_bytes(bytes(data))
    # a shard without an index (as other tools write them), cut mid-way: Ray's read fails
    cut = root / "train" / "speech" / "spk-00003.tar"
    cut.write_bytes((root / "train" / "speech" / "spk-00001.tar").read_bytes()[:30000])
    # a record of an unknown schema version in its own shard
    rng = np.random.default_rng(3)
    clip = make_clip("z/00000", 1.0, "from the future", rng, video=False)
    clip.meta["schema_version"] = 7
    w = ShardWriter(root / "train" / "speech", "future", 1 << 30, 10)
    w.write(clip)
    w.close()
    cfg = CurriculumConfig.model_validate(
        debug_dict(shards=str(root), data={"max_bad_shards": 0.5})
    )
    plan = plan_stage(cfg, cfg.stages[0])
    assert plan.shards == 5 and not plan.bad  # the size checks cannot see inside
    # counting the tar headers as the reader will finds the two samples past the bad header
    assert plan.lost_samples == 2 and [c.uri for c in plan.lossy] == [str(bad)]
    strict = CurriculumConfig.model_validate(
        debug_dict(shards=str(root), data={"max_bad_shards": 0.5, "max_lost_samples": 1})
    )
    with pytest.raises(ConfigError, match=r"2 samples are lost .*spk-00002.tar: 2 of 4"):
        plan_stage(strict, strict.stages[0])
    ds = build_dataset(plan, STEMS, 100.0, max_bad_shards=0.5, seed=0)
    rows = ds.take_all()
    ok = [r for r in rows if not r["error"]]
    errors = [r for r in rows if r["error"]]
    by_shard = {}
    for r in ok:
        by_shard[r["url"].rsplit("/", 1)[1]] = by_shard.get(r["url"].rsplit("/", 1)[1], 0) + 1
    # Python's tarfile ends an archive at an invalid header: the samples before it arrive; the
    # cut shard's read task fails and is skipped (DataContext.max_errored_blocks)
    assert by_shard == {"spk-00000.tar": 4, "spk-00001.tar": 4, "spk-00002.tar": 2}
    assert [r["key"] for r in errors] == ["z/00000"]
    assert "schema_version 7" in errors[0]["error"]


def test_tar_member_layout_matches_the_reader(train_shards):
    """The shards the tests train on are what ingest writes: members <key>.<field>."""
    with tarfile.open(train_shards / "train" / "movies" / "clip-00000.tar") as tar:
        names = tar.getnames()[:6]
    first = [n for n in names if n.startswith(names[0].split(".", 1)[0] + ".")]
    assert len(first) == 5 and all("/" in n for n in names)  # json, 2 mels, lips, face
    json_name = next(n for n in first if n.endswith(".json"))
    meta = json.load(io.BytesIO(tarfile.open(train_shards / "train" / "movies" / "clip-00000.tar")
                                .extractfile(json_name).read()))  # fmt: skip
    assert meta["schema_version"] == SCHEMA_VERSION and meta["split"] == "train"


def test_records_without_a_stage_task_are_dropped_before_the_split():
    rng = np.random.default_rng(4)
    clips = [make_clip(f"m/{i:05d}", 1.0, "x", rng, video=i < 2) for i in range(5)]
    df = pd.DataFrame([_rows(c) for c in clips])
    out = decode_rows(df, STEMS, 100.0, 1.0, 0, tasks=["v2a"])
    assert list(out["key"]) == ["m/00000", "m/00001"]  # speech-only clips cannot train v2a
    assert len(decode_rows(df, STEMS, 100.0, 1.0, 0, tasks=["v2a", "tts"])) == 5
