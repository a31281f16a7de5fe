"""`evaluate_checkpoint`: a tiny exported dubber scored on hand-written shards (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dubforge.eval.config import EvalConfig
from dubforge.eval.evaluate import METRICS
from dubforge.eval.run import evaluate_checkpoint, read_items, reference_speech, shard_paths
from dubforge.ingest.shards import Sample, ShardWriter
from dubforge.model.checkpoint import save_checkpoint
from dubforge.model.config import ModelConfig
from dubforge.model.presets import build_model, space_from_config
from dubforge.model.spaces import MelSpace
from tests.eval.tiny_models import save_random_syncnet
from tests.ingest.codec_model import make_tiny_codec
from tests.model.conftest import make_record

SR = 24000


def _tone(path: Path, seconds: float = 2.0, hz: float = 220.0) -> Path:
    t = np.arange(round(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    return path


def _records(media: Path) -> list[tuple[dict, dict]]:
    """A movie with a delivered dialogue stem (v2st), a speech-corpus clip (tts), a movie whose
    source is gone but whose faces are 25 fps (v2st, LSE), and two records to skip."""
    movie_meta, movie = make_record("movie_a/00000", 1.0, seed=1)
    (media / "movie_a.mp4").write_bytes(b"the mixture; never read as a speech reference")
    _tone(media / "movie_a.dialogue.wav")
    movie_meta.update(kind="movie", source=str(media / "movie_a.mp4"), start=0.2, end=1.2)
    speech_meta, speech = make_record("reader_0/00000", 1.0, bg=False, video=False, seed=2)
    speech_meta.update(kind="speech", source=str(_tone(media / "reader_0.wav")), speaker="r0")
    gone_meta, gone = make_record("movie_b/00003", 1.0, face=False, seed=3)
    gone_meta.update(kind="movie", source=str(media / "missing.mp4"), face_fps=25)
    gone["face"] = np.random.default_rng(3).integers(0, 256, (25, 224, 224, 3), dtype=np.uint8)
    codes_meta, codes = make_record("movie_c/00000", 1.0, seed=4, codes=8)
    del codes["speech.mel"]
    old_meta, old = make_record("movie_d/00000", 1.0, seed=5)
    old_meta["schema_version"] = 0
    return [(movie_meta, movie), (speech_meta, speech), (gone_meta, gone), (codes_meta, codes),
            (old_meta, old)]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """An exported tiny mel-space checkpoint and two shards of five records."""
    root = tmp_path_factory.mktemp("evaluate")
    media = root / "media"
    media.mkdir()
    writer = ShardWriter(root / "ingest" / "shards", "unit", 2**26, max_samples=3)
    for meta, arrays in _records(media):
        writer.write(Sample(meta["key"], meta, arrays))
    writer.close()
    torch.manual_seed(0)
    cfg, space = ModelConfig(), MelSpace(griffin_lim_iters=4)
    model = build_model(cfg, space)
    with torch.no_grad():  # leave the zero init so the output depends on the weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = save_checkpoint(root / "ckpt", model, cfg, space, stage="tts", step=1)
    syncnet = save_random_syncnet(root / "syncnet.model")
    return {"root": root, "ckpt": ckpt, "ingest": root / "ingest", "syncnet": syncnet}


@pytest.fixture(scope="module")
def evaluated(inputs) -> tuple[dict, Path]:
    out = inputs["root"] / "eval"
    config = EvalConfig(speaker_encoder="none", syncnet_path=inputs["syncnet"], lse_vshift=2)
    summary = evaluate_checkpoint(inputs["ckpt"], inputs["ingest"], out, nfe=2, guidance=None,
                                  eval_config=config, samples=2)  # fmt: skip
    return summary, out


def test_outputs_exist(evaluated):
    summary, out = evaluated
    assert {p.name for p in out.iterdir()} == {"metrics.json", "metrics.md", "evaluation.json",
                                               "samples"}  # fmt: skip
    names = sorted(p.name for p in (out / "samples").iterdir())
    stems = ["movie_a_00000.gen", "movie_a_00000.gen.bg", "movie_a_00000.ref",
             "reader_0_00000.gen", "reader_0_00000.ref"]  # fmt: skip
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "wav"))
    assert json.loads((out / "evaluation.json").read_text()) == summary
    assert "| **mean (n)** |" in (out / "metrics.md").read_text()


def test_every_metric_is_a_number_or_a_reason(evaluated):
    summary, out = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["sample"] for r in doc["rows"]] == ["movie_a_00000", "reader_0_00000",
                                                  "movie_b_00003"]  # fmt: skip
    for row in doc["rows"]:
        assert set(METRICS) <= set(row), row["sample"]
        for name in METRICS:
            value, reason = row[name]["value"], row[name]["reason"]
            assert (value is None) == bool(reason), (row["sample"], name, row[name])
        assert row["mcd_dtw"]["value"] is not None
    movie, speech, gone = doc["rows"]
    assert "ASR" in movie["wer"]["reason"] and "speaker encoder" in movie["secs"]["reason"]
    assert "no video" in speech["av_align"]["reason"]
    assert "25 fps" in movie["lse_d"]["reason"] and gone["lse_d"]["value"] is not None
    assert set(summary["metrics"]) == set(METRICS)


def test_tasks_reference_origins_and_skips_are_recorded(evaluated):
    summary, _ = evaluated
    got = [(s["key"], s["task"], s["reference"]) for s in summary["samples"]]
    assert got == [("movie_a/00000", "v2st", "source_dialogue"),
                   ("reader_0/00000", "tts", "source"),
                   ("movie_b/00003", "v2st", "decoded_latents")]  # fmt: skip
    assert all(s["scored_from_s"] == pytest.approx(0.28) for s in summary["samples"])
    skipped = {s["key"]: s["reason"] for s in summary["skipped"]}
    assert "speech.mel" in skipped["movie_c/00000"] and "schema_version" in skipped["movie_d/00000"]
    assert summary["settings"]["nfe"] == 2 and summary["settings"]["cfg"] is None


def test_limit_and_shard_locations(inputs):
    shards = inputs["ingest"] / "shards"
    every = shard_paths(inputs["ingest"])
    assert len(every) == 2 and every == shard_paths(shards) == shard_paths(f"{shards}/*.tar")
    assert shard_paths(every[0]) == [every[0]]
    with pytest.raises(FileNotFoundError, match="glob"):
        shard_paths(inputs["root"] / "nothing-here")
    items, skipped = read_items(every, MelSpace(), ("tts", "v2s"), limit=1)
    assert [(it.name, it.task) for it in items] == [("movie_a_00000", "v2s")] and not skipped
    items, skipped = read_items(every, MelSpace(), ("v2a",), limit=8)
    assert not items and len(skipped) == 5 and "supports none" in skipped[0]["reason"]


def test_unreadable_source_falls_back_to_the_latents(tmp_path):
    meta, arrays = make_record("reader_1/00000", 0.5, bg=False, video=False)
    (tmp_path / "broken.wav").write_text("not audio")
    meta.update(kind="speech", source=str(tmp_path / "broken.wav"))
    wave, origin = reference_speech(meta, arrays, MelSpace(griffin_lim_iters=2))
    assert origin.startswith("decoded_latents (") and "decode_error" in origin
    assert wave.shape == (12000,)  # 50 mel frames x 240 samples


def test_codec_space_checkpoint(tmp_path):
    """75 Hz EnCodec latents: 320-sample frames, reference cut at whole 25 fps frames (x3)."""
    codec = make_tiny_codec(tmp_path / "codec", "encodec")
    cfg = ModelConfig(space={"name": "codec", "path": str(codec), "codebooks": 8}, tasks=["v2s"])
    space = space_from_config(cfg.space)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(cfg, space), cfg, space)
    writer = ShardWriter(tmp_path / "shards", "unit", 2**26, max_samples=8)
    meta, arrays = make_record("movie_e/00000", 1.0, face=False, codes=8)
    writer.write(Sample(meta["key"], meta, arrays))
    writer.close()
    quiet = EvalConfig(speaker_encoder="none")
    summary = evaluate_checkpoint(
        ckpt, tmp_path / "shards", tmp_path / "eval", nfe=2, eval_config=quiet, samples=0
    )
    (sample,) = summary["samples"]
    assert (sample["task"], sample["reference"]) == ("v2s", "decoded_latents")
    assert sample["scored_from_s"] == pytest.approx(21 * 320 / 24000)  # int(75 * 0.3) // 3 * 3
    assert summary["space"] == "codec" and summary["metrics"]["mcd_dtw"]["count"] == 1
    assert not (tmp_path / "eval" / "samples").exists()
