"""The ingest's GPU actor pools, checked on the CPU: the codec's device and batched encode in
the Tokenize stage, the separator's batch size, and the refusal of pools the cluster's GPUs
cannot hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dubforge.ingest import stages
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.pipeline import _check_cluster, build_dataset
from dubforge.ingest.tokenize import CodecTokenizer
from tests.ingest.codec_model import make_tiny_codec


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No hub access (huggingface_hub reads HF_HUB_OFFLINE once at import: patch both)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> str:
    return str(make_tiny_codec(tmp_path_factory.mktemp("codec") / "encodec", "encodec"))


def _cfg(path: str = "c", **sections) -> IngestConfig:
    codec_section = {"name_or_path": path, **sections.pop("codec", {})}
    return IngestConfig(input=["x"], output="y", codec=codec_section, **sections)


def _noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def _row(i: int, seconds: float) -> dict:
    n = round(seconds * 24000)
    return {
        "status": "pending",
        "clip": {"start": 0.0, "end": seconds},
        "key": f"m/{i:05d}",
        "audio": _noise(n, 100 + i),
        "speech": _noise(n, i),
        "background": _noise(n, 50 + i),
    }


def _mismatched_frames(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int((a != b).any(axis=0).sum())


# --- codec device and batched encode ------------------------------------------------------


@pytest.mark.parametrize(
    ("codec_section", "device"),
    [
        ({}, "cpu"),
        ({"num_gpus": 1}, "cuda"),
        ({"num_gpus": 0.5, "device": "cuda:1"}, "cuda:1"),
        ({"num_gpus": 1, "device": "cpu"}, "cpu"),
    ],
)
def test_codec_device_follows_its_gpus(monkeypatch, codec_section, device):
    built = {}

    class Recorder:
        def __init__(self, name_or_path: str, **kwargs) -> None:
            built.update(kwargs)

    monkeypatch.setattr("dubforge.ingest.tokenize.CodecTokenizer", Recorder)
    stages.Tokenize(_cfg(codec={"bandwidth": 6.0, **codec_section}))
    assert built == {"device": device, "bandwidth": 6.0}


def test_cuda_codec_without_gpus_is_refused():
    with pytest.raises(ValidationError, match="codec.num_gpus"):
        _cfg(codec={"device": "cuda"})


def test_tokenize_encodes_all_clips_of_a_batch_in_one_call(codec, monkeypatch):
    stage = stages.Tokenize(_cfg(codec))
    calls: list[int] = []
    real = CodecTokenizer.encode_batch

    def spy(self, waves):
        calls.append(len(waves))
        return real(self, waves)

    monkeypatch.setattr(CodecTokenizer, "encode_batch", spy)
    rows = [_row(0, 1.0), _row(1, 1.7), _row(2, 0.4)]
    singles = {
        (r["key"], stem): stage.codec.encode(r[stem])
        for r in rows
        for stem in ("speech", "background")
    }
    calls.clear()
    out = stages.rows_of(stage(stages.batch_of([stages.pack(r) for r in rows])))
    assert calls == [6]  # 3 clips x 2 stems, one batched encode
    for r in out:
        assert r["status"] == "pending"
        for stem, short in (("speech", "speech"), ("background", "bg")):
            single, batched = singles[(r["key"], stem)], r[f"{short}.codes"]
            # batched vs single EnCodec codes: a rare near-tie flips (FACTS: ~5 of 8,720 frames)
            assert _mismatched_frames(single, batched) <= 0.03 * single.shape[1]


def test_a_bad_clip_in_a_batch_rejects_only_itself(codec):
    stage = stages.Tokenize(_cfg(codec))
    bad = _row(1, 1.0)
    bad["speech"] = np.zeros(24000, np.int16)  # not a float wave: the batched encode fails
    rows = [_row(0, 1.0), bad, _row(2, 0.5), {"status": "rejected", "clip": None, "key": "x"}]
    out = stages.rows_of(stage(stages.batch_of([stages.pack(r) for r in rows])))
    assert [r["status"] for r in out] == ["pending", "rejected", "pending", "rejected"]
    assert out[1]["reason"] == "tokenize_error" and "1-D float waveform" in out[1]["detail"]
    assert out[0]["speech.codes"].shape == (8, 75) and out[2]["bg.codes"].shape == (8, 38)


# --- the Ray Data plan and the cluster check ----------------------------------------------


class _Plan:
    """Stands in for a Ray Dataset: records every map_batches call."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, dict]] = []

    def flat_map(self, fn, **kwargs):
        return self

    def map_batches(self, fn, **kwargs):
        self.calls.append((fn, kwargs))
        return self


def test_batch_sizes_and_gpus_reach_map_batches(monkeypatch):
    import ray.data

    plan = _Plan()
    monkeypatch.setattr(ray.data, "from_items", lambda *args, **kwargs: plan)
    cfg = _cfg(
        separator={"model_dir": "sep", "batch_size": 6, "num_gpus": 0.5},
        codec={"batch_size": 16, "num_gpus": 1},
        num_cpus=8,
    )
    build_dataset([{"name": "u"}], cfg, 24000)
    by_fn = {fn: kwargs for fn, kwargs in plan.calls}
    assert by_fn[stages.Separate]["batch_size"] == 6
    assert by_fn[stages.Separate]["num_gpus"] == 0.5
    assert by_fn[stages.Tokenize]["batch_size"] == 16
    assert by_fn[stages.Tokenize]["num_gpus"] == 1


def test_cluster_without_gpus_is_refused_for_gpu_pools():
    cfg = _cfg(codec={"num_gpus": 1, "actors": 2})
    with pytest.raises(RuntimeError, match=r"has 0 GPUs; this ingest config needs 2 \(codec 2"):
        _check_cluster(cfg, {"CPU": 16})
    _check_cluster(cfg, {"CPU": 16, "GPU": 2})


def test_separator_gpus_count_only_when_it_runs():
    sep = {"num_gpus": 1, "actors": 2}
    codec = {"num_gpus": 0.5, "actors": 2}
    idle = _cfg(codec=codec, separator=sep)  # no model_dir: no separator pool
    _check_cluster(idle, {"CPU": 16, "GPU": 1})
    running = _cfg(codec=codec, separator={**sep, "model_dir": "sep"})
    with pytest.raises(RuntimeError, match=r"needs 3 \(codec 1, separator 2"):
        _check_cluster(running, {"CPU": 16, "GPU": 2})
    _check_cluster(running, {"CPU": 16, "GPU": 3})


def test_cpu_only_config_needs_no_gpus():
    _check_cluster(_cfg(), {"CPU": 4})
    with pytest.raises(RuntimeError, match="CPUs"):
        _check_cluster(_cfg(), {"CPU": 2})
