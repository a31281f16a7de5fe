"""collate: tasks, streams, spans, masks, video padding, inference references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dubforge.model.batch import collate, split_row, supported_tasks
from dubforge.model.conditions import text_ids
from dubforge.model.spaces import MelSpace
from tests.model.conftest import make_record

SPACE = MelSpace()  # vocos_24k: 93.75 frames/s, the profile make_record writes


def n_(seconds: float) -> int:
    """Latent frames of a clip of `seconds` in SPACE."""
    return round(seconds * SPACE.frame_rate)


def test_every_task_in_one_batch_has_its_streams_and_spans():
    recs = [
        make_record("a/00000", 1.0),
        make_record("b/00000", 0.8, seed=1),
        make_record("c/00000", 1.0, video=False, bg=False),
        make_record("d/00000", 0.6),
    ]
    b = collate(recs, SPACE, tasks=["v2st", "v2s", "tts", "v2a"], seed=0)
    a, b8, c6 = n_(1.0), n_(0.8), n_(0.6)
    assert b.latents.shape == (4, 2, a, 100)  # v2st forces two streams for everyone
    assert b.stream_ids.tolist() == [[0, 1], [0, 0], [0, 0], [1, 0]]
    assert b.frame_mask.sum(dim=(1, 2)).tolist() == [2 * a, b8, a, c6]
    assert b.lengths.tolist() == [a, b8, a, c6]
    # the background stream and v2a are generated whole; speech spans are 70-100 % contiguous
    assert bool(b.span[0, 1].eq(b.frame_mask[0, 1]).all())
    assert bool(b.span[3, 0, :c6].all()) and not bool(b.span[3, 0, c6:].any())
    for i, n in ((0, a), (1, b8), (2, a)):
        idx = b.span[i, 0].nonzero().squeeze(1)
        assert 0.7 * n - 1 <= len(idx) <= n
        assert idx.max() - idx.min() + 1 == len(idx)  # one contiguous span
    assert not bool((b.span & ~b.frame_mask).any())
    # targets: mel transposed to [n, 100]; padding zero
    mel = recs[0][1]["speech.mel"].astype(np.float32).T
    assert torch.equal(b.latents[0, 0], torch.from_numpy(mel))
    assert torch.equal(b.latents[0, 1], torch.from_numpy(recs[0][1]["bg.mel"].astype(np.float32).T))
    assert float(b.latents[1, :, b8:].abs().sum()) == 0
    assert float(b.latents[1, 1].abs().sum()) == 0
    # video only for video tasks; lips padded to the longest clip with a mask
    assert b.has_video.tolist() == [True, True, False, True]
    assert b.lips.shape == (4, 25, 96, 96) and b.lip_mask.sum(1).tolist() == [25, 20, 0, 15]
    assert b.face.shape == (4, 5, 224, 224, 3) and b.face_mask.sum(1).tolist() == [5, 4, 0, 3]
    # text only where the task reads it
    assert b.text[0, :11].tolist() == text_ids("hello there") and int(b.text[3].abs().sum()) == 0
    assert b.labels[0].tolist() == [1, 2, 0, 4]  # dialogue, female, unknown age, sad
    # speech activity (L_dur target) only for video tasks with speech
    assert b.activity_mask.sum(1).tolist() == [a, b8, 0, 0]


def test_audio_only_records_train_tts_only():
    rec = make_record(video=False, bg=False)
    assert supported_tasks(rec[1], SPACE) == ["tts"]
    b = collate([rec, make_record("x/00001", 0.5, video=False, bg=False)], SPACE, seed=0)
    assert b.tasks == ("tts", "tts") and b.lips is None and b.face is None
    assert b.latents.shape == (2, 1, n_(1.0), 100) and not bool(b.has_video.any())
    with pytest.raises(ValueError, match="lips"):
        collate([rec], SPACE, tasks="v2s")


def test_task_drawn_from_allowed_and_supported():
    recs = [make_record(f"m/{i:05d}", 0.2, face=False, seed=i) for i in range(30)]
    b = collate(recs, SPACE, allowed=("v2a", "v2st"), seed=3)
    assert set(b.tasks) == {"v2a", "v2st"}
    with pytest.raises(ValueError, match="supports none of the tasks"):
        collate([make_record(video=False)], SPACE, allowed=("v2a",))


def test_missing_target_and_unknown_schema_are_errors():
    meta, arrays = make_record(bg=False)
    with pytest.raises(ValueError, match="bg.mel"):
        collate([(meta, arrays)], SPACE, tasks="v2a")
    with pytest.raises(ValueError, match="schema_version"):
        collate([({**meta, "schema_version": 99}, arrays)], SPACE, tasks="tts")
    with pytest.raises(ValueError, match="unknown task"):
        collate([(meta, arrays)], SPACE, tasks="dance")


def test_inference_reference_prefix_and_length_from_lips():
    meta, arrays = make_record(seconds=1.2)
    b = collate([({**meta, "ref_frames": 30}, arrays)], SPACE, tasks="v2s", train=False)
    assert b.span[0, 0].tolist() == [False] * 30 + [True] * (n_(1.2) - 30)
    # no target audio at all: the clip length comes from the lips (30 frames x 3.75)
    video_only = {k: v for k, v in arrays.items() if k in ("lips", "face")}
    b = collate([(meta, video_only)], SPACE, tasks="v2st", train=False)
    assert b.latents.shape == (1, 2, round(30 * 3.75), 100) and bool(b.span.all())
    assert float(b.latents.abs().sum()) == 0


def test_speech_activity_follows_the_mel_energy():
    meta, arrays = make_record(seconds=1.0)
    mel = np.full((100, 100), -11.5, dtype=np.float16)
    mel[:, 20:60] = 0.0  # loud between 0.2 s and 0.6 s
    b = collate([(meta, {**arrays, "speech.mel": mel})], SPACE, tasks="v2s", train=False)
    act = b.activity[0]
    assert act[20:60].eq(1).all() and act[:20].eq(0).all() and act[60:].eq(0).all()


def test_text_is_utf8_bytes_truncated_to_length():
    meta, arrays = make_record(seconds=0.1, video=False, bg=False, text="é" * 20)
    b = collate([(meta, arrays)], SPACE, tasks="tts")
    n = n_(0.1)  # 9 frames: the 40 bytes are cut to them
    assert b.text.shape == (1, n) and b.text[0].tolist() == ([0xC3 + 1, 0xA9 + 1] * 5)[:n]


def test_split_row_reads_webdataset_rows():
    meta, arrays = make_record(video=False)
    row = {"json": __import__("json").dumps(meta).encode(), "__key__": meta["key"],
           **{f"{k}.npy": v for k, v in arrays.items()}}  # fmt: skip
    m, a = split_row(row)
    assert m.key == meta["key"] and m.split == "train" and sorted(a) == sorted(arrays)
    with pytest.raises(ValueError, match="json"):
        split_row({"speech.mel.npy": arrays["speech.mel"]})
