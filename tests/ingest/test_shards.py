"""Shards read back identically with our reader, the webdataset library and Ray Data."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from dubforge.ingest.shards import Sample, ShardError, ShardWriter, read_shard


def _samples(n: int) -> list[Sample]:
    return [
        Sample(
            f"movie_000/{k:05d}",
            {"clip_no": k, "text": f"line {k}"},
            {
                "speech.codes": np.full((8, 75 * (k + 1)), k, np.int16),
                "lips": np.full((25 * (k + 1), 96, 96), k, np.uint8),
            },
        )  # fmt: skip
        for k in range(n)
    ]


def test_size_bound_index_and_round_trip(tmp_path):
    writer = ShardWriter(tmp_path, "movie_000", max_bytes=400_000, max_samples=100)
    names = [writer.write(s) for s in _samples(5)]
    shards = writer.close()
    assert len(shards) > 1 and names[0] == shards[0] and names[-1] == shards[-1]
    assert not list(tmp_path.glob("*.tmp"))
    got = [s for name in shards for s in read_shard(tmp_path / name)]
    assert [s.key for s in got] == [f"movie_000/{k:05d}" for k in range(5)]
    for k, s in enumerate(got):
        assert s.meta == {"clip_no": k, "text": f"line {k}"}
        assert s.arrays["speech.codes"].dtype == np.int16
        assert s.arrays["lips"].shape == (25 * (k + 1), 96, 96)
    for name in shards:
        index = json.loads((tmp_path / name.replace(".tar", ".index.json")).read_text())
        assert index["bytes"] == (tmp_path / name).stat().st_size
        with open(tmp_path / name, "rb") as f:  # offsets point at each sample's first member
            for entry in index["samples"]:
                f.seek(entry["offset"])
                assert f.read(100).split(b"\0")[0].decode() == entry["key"] + ".json"


def test_webdataset_library_reads_them(tmp_path):
    writer = ShardWriter(tmp_path, "s", max_bytes=10**9, max_samples=2)
    for s in _samples(3):
        writer.write(s)
    urls = [str(tmp_path / n) for n in writer.close()]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [g["__key__"] for g in got] == [f"movie_000/{k:05d}" for k in range(3)]
    assert got[2]["json"]["clip_no"] == 2 and got[2]["lips.npy"].shape == (75, 96, 96)


@pytest.mark.slow
def test_ray_data_reads_them(tmp_path):
    import ray

    writer = ShardWriter(tmp_path, "s", max_bytes=10**9, max_samples=2)
    for s in _samples(3):
        writer.write(s)
    urls = [str(tmp_path / n) for n in writer.close()]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = sorted(ray.data.read_webdataset(urls).take_all(), key=lambda r: r["__key__"])
    finally:
        ray.shutdown()
    assert [r["__key__"] for r in rows] == [f"movie_000/{k:05d}" for k in range(3)]
    assert rows[1]["json"]["clip_no"] == 1
    assert rows[1]["speech.codes.npy"].shape == (8, 150)
    assert rows[2]["lips.npy"].dtype == np.uint8


def test_reader_refuses_interleaved_and_dotted_keys(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name in ("a/1.json", "a/2.json", "a/1.lips.npy"):
            info = tarfile.TarInfo(name)
            data = b"{}"
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    with pytest.raises(ShardError, match="not contiguous"):
        list(read_shard(bad))
    with pytest.raises(ShardError, match="dot"):
        Sample("a.b/1", {}, {}).members()
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardError, match="not a readable tar"):
        list(read_shard(tmp_path / "junk.tar"))
