"""`evaluate_checkpoint`: a tiny exported dubber scored on hand-written val shards (no Ray),
under the papers' protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dubforge.eval.config import EvalConfig
from dubforge.eval.evaluate import METRICS, Evaluator
from dubforge.eval.run import evaluate_checkpoint, read_records, reference_speech, shard_paths
from dubforge.ingest.shards import Sample, ShardWriter
from dubforge.model.checkpoint import save_checkpoint
from dubforge.model.config import ModelConfig
from dubforge.model.presets import build_model, space_from_config
from dubforge.model.spaces import MelSpace
from dubforge.schema import ClipRecord
from tests.eval.tiny_models import save_random_syncnet
from tests.ingest.codec_model import make_tiny_codec
from tests.model.conftest import make_record

SR = 24000
QUIET = EvalConfig(speaker_encoder="none", dnsmos=False)


def _tone(path: Path, seconds: float = 2.0, hz: float = 220.0) -> Path:
    t = np.arange(round(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    return path


def _val(meta: dict, **kw) -> dict:
    return {**meta, "split": "val", **kw}


def _records(media: Path) -> list[tuple[dict, dict]]:
    """Two clips of one movie speaker (v2st, a delivered dialogue stem), two of one reader
    (tts), a movie clip whose speaker has no other clip (25 fps faces, source gone), and three
    to skip: codes only, an old schema, a train record in the val folder."""
    (media / "movie_a.mp4").write_bytes(b"the mixture; never read as a speech reference")
    _tone(media / "movie_a.dialogue.wav", 4.0)
    out = []
    for k, (start, seconds) in enumerate(((0.2, 1.0), (2.0, 1.4))):
        meta, arrays = make_record(f"movie_a/0000{k}", seconds, seed=1 + k, text=f"line {k}")
        out.append(
            (
                _val(
                    meta,
                    kind="movie",
                    source=str(media / "movie_a.mp4"),
                    start=start,
                    end=start + seconds,
                    speaker="movie_a:A",
                ),
                arrays,
            )
        )
    for k in range(2):
        meta, arrays = make_record(
            f"reader_0/0000{k}", 1.0, bg=False, video=False, seed=3 + k, text=f"read {k}"
        )
        source = str(_tone(media / f"reader_0_{k}.wav", hz=200 + 40 * k))
        out.append((_val(meta, kind="speech", source=source, speaker="r0"), arrays))
    meta, gone = make_record("movie_b/00003", 1.0, face=False, seed=5)
    gone["face"] = np.random.default_rng(3).integers(0, 256, (25, 224, 224, 3), dtype=np.uint8)
    out.append(
        (
            _val(
                meta,
                kind="movie",
                source=str(media / "missing.mp4"),
                face_fps=25,
                speaker="movie_b:B",
            ),
            gone,
        )
    )
    meta, codes = make_record("movie_c/00000", 1.0, seed=6, codes=8)
    del codes["speech.mel"]
    out.append((_val(meta, speaker="movie_c:C"), codes))
    meta, old = make_record("movie_d/00000", 1.0, seed=7)
    out.append((_val(meta, schema_version=1), old))
    meta, trained = make_record("movie_e/00000", 1.0, seed=8)
    out.append((meta, trained))  # split "train", but written into the val folder
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """An exported tiny mel-space checkpoint and the val shards of the records above."""
    root = tmp_path_factory.mktemp("evaluate")
    media = root / "media"
    media.mkdir()
    writer = ShardWriter(root / "ingest" / "shards" / "val", "unit", 2**26, max_samples=4)
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
def evaluated(inputs) -> tuple[dict, Path, list[str]]:
    out = inputs["root"] / "eval"
    config = EvalConfig(speaker_encoder="none", syncnet_path=inputs["syncnet"], lse_vshift=2)
    texts: list[str] = []
    ev = Evaluator(config)
    real = type(ev).__call__

    class Spy(type(ev)):
        def __call__(self, *args, **kw):
            texts.append(kw.get("text"))
            return real(self, *args, **kw)

    ev.__class__ = Spy
    summary = evaluate_checkpoint(
        inputs["ckpt"], inputs["ingest"], out, nfe=2, guidance=None, evaluator=ev, samples=2
    )
    return summary, out, texts


def test_outputs_exist(evaluated):
    summary, out, _ = evaluated
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "metrics.md",
        "evaluation.json",
        "samples",
    }
    names = sorted(p.name for p in (out / "samples").iterdir())
    stems = [
        "movie_a_00000.gen",
        "movie_a_00000.gen.bg",
        "movie_a_00000.ref",
        "movie_a_00001.gen",
        "movie_a_00001.gen.bg",
        "movie_a_00001.ref",
    ]
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "wav"))
    assert json.loads((out / "evaluation.json").read_text()) == summary
    assert "| **mean (n)** |" in (out / "metrics.md").read_text()


def test_setting_2_prompts_with_another_clip_of_the_speaker(evaluated):
    summary, _, _ = evaluated
    assert (summary["protocol"], summary["split"]) == ("setting2", "val")
    assert summary["vocoder"] == {"kind": "griffin_lim", "path": None, "fallback": True}
    got = [
        (s["key"], s["task"], s["reference_clip"], s["target_speech"]) for s in summary["samples"]
    ]
    assert got == [
        ("movie_a/00000", "v2st", "movie_a/00001", "source_dialogue"),
        ("movie_a/00001", "v2st", "movie_a/00000", "source_dialogue"),
        ("reader_0/00000", "tts", "reader_0/00001", "source"),
        ("reader_0/00001", "tts", "reader_0/00000", "source"),
    ]
    # the whole target clip is generated: its length is the target's, not the prompt's
    for s, seconds in zip(summary["samples"], (1.0, 1.4, 1.0, 1.0), strict=True):
        assert abs(s["seconds"] - seconds) < 0.02, s
    skipped = {s["key"]: s["reason"] for s in summary["skipped"]}
    assert "no other clip of movie_b:B" in skipped["movie_b/00003"]
    assert "speech.mel" in skipped["movie_c/00000"] and "Re-ingest" in skipped["movie_d/00000"]
    assert "train record in the val folder" in skipped["movie_e/00000"]


def test_wer_compares_the_target_script(evaluated):
    """The old code scored the part after an in-clip reference against the whole line; the
    text scored now is exactly each target's own script."""
    summary, _, texts = evaluated
    assert texts == ["line 0", "line 1", "read 0", "read 1"]


def test_every_metric_is_a_number_or_a_reason(evaluated):
    summary, out, _ = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["rows"]) == 4
    for row in doc["rows"]:
        assert set(METRICS) <= set(row), row["sample"]
        for name in METRICS:
            value, reason = row[name]["value"], row[name]["reason"]
            assert (value is None) == bool(reason), (row["sample"], name, row[name])
        assert row["mcd_dtw"]["value"] is not None and row["dnsmos_ovrl"]["value"] is not None
    movie, _, speech, _ = doc["rows"]
    assert "ASR" in movie["wer"]["reason"] and "speaker encoder" in movie["secs"]["reason"]
    assert "no video" in speech["av_align"]["reason"]
    assert "25 fps" in movie["lse_d"]["reason"]
    # v2st's background stream is scored too; no local movie frames -> AV-Align n/a
    assert movie["bg_energy_ratio_db"]["value"] is not None
    assert movie["bg_dnsmos_bak"]["value"] is not None


def test_setting_1_uses_the_targets_own_audio(inputs, tmp_path):
    summary = evaluate_checkpoint(
        inputs["ckpt"],
        inputs["ingest"],
        tmp_path,
        nfe=2,
        protocol="setting1",
        guidance=None,
        eval_config=QUIET,
        samples=0,
        clips=5,
    )
    assert [(s["key"], s["reference_clip"]) for s in summary["samples"]] == [
        (k, k)
        for k in (
            "movie_a/00000",
            "movie_a/00001",
            "reader_0/00000",
            "reader_0/00001",
            "movie_b/00003",
        )
    ]


def test_copy_baseline_scores_the_stretched_reference(inputs, tmp_path):
    summary = evaluate_checkpoint(
        inputs["ckpt"],
        inputs["ingest"],
        tmp_path,
        nfe=2,
        generator="copy",
        eval_config=QUIET,
        samples=0,
    )
    assert summary["generator"] == "copy" and len(summary["samples"]) == 4
    for s, seconds in zip(summary["samples"], (1.0, 1.4, 1.0, 1.0), strict=True):
        assert abs(s["seconds"] - seconds) < 0.02, s  # stretched to the target's length
    assert summary["metrics"]["mcd_dtw"]["count"] == 4


def test_train_is_never_scored_and_shard_locations(inputs):
    with pytest.raises(ValueError, match="never train"):
        evaluate_checkpoint(inputs["ckpt"], inputs["ingest"], "/tmp/x", split="train")
    shards = inputs["ingest"] / "shards"
    every = shard_paths(inputs["ingest"], "val")
    assert len(every) == 2 and every == shard_paths(shards, "val")  # 8 records, 4 a shard
    with pytest.raises(FileNotFoundError, match="test"):
        shard_paths(inputs["ingest"], "test")
    records, skipped = read_records(every, "val", limit=3)
    assert [r.key for r, _ in records] == ["movie_a/00000", "movie_a/00001", "reader_0/00000"]


def test_unreadable_source_falls_back_to_the_latents(tmp_path):
    meta, arrays = make_record("reader_1/00000", 0.5, bg=False, video=False)
    (tmp_path / "broken.wav").write_text("not audio")
    meta.update(kind="speech", source=str(tmp_path / "broken.wav"))
    wave, origin = reference_speech(
        ClipRecord.from_dict(meta), arrays, MelSpace(griffin_lim_iters=2)
    )
    assert origin.startswith("decoded_latents (") and "decode_error" in origin
    assert len(wave) == (len(arrays["speech.mel"][0]) - 1) * 256  # vocos_24k: hop 256, centred


def test_codec_space_checkpoint(tmp_path):
    """75 Hz EnCodec latents; setting 1 (the reader's only clip prompts itself)."""
    codec = make_tiny_codec(tmp_path / "codec", "encodec")
    cfg = ModelConfig(space={"name": "codec", "path": str(codec), "codebooks": 8}, tasks=["v2s"])
    space = space_from_config(cfg.space)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(cfg, space), cfg, space)
    writer = ShardWriter(tmp_path / "shards" / "test", "unit", 2**26, max_samples=8)
    meta, arrays = make_record("movie_e/00000", 1.0, face=False, codes=8)
    writer.write(Sample(meta["key"], {**meta, "split": "test"}, arrays))
    writer.close()
    summary = evaluate_checkpoint(
        ckpt,
        tmp_path / "shards",
        tmp_path / "eval",
        split="test",
        protocol="setting1",
        nfe=2,
        eval_config=QUIET,
        samples=0,
    )
    (sample,) = summary["samples"]
    assert (sample["task"], sample["target_speech"]) == ("v2s", "decoded_latents")
    assert sample["prompt_seconds"] == pytest.approx(1.0)
    assert summary["space"] == "codec" and summary["metrics"]["mcd_dtw"]["count"] == 1
    assert not (tmp_path / "eval" / "samples").exists()
