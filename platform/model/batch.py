"""Clip records -> padded batches (tensors + masks + a task per sample), and latents -> waves.

A record is what ingest writes per clip: `(meta, arrays)`, a `dubforge.schema.ClipRecord` (a
JSON dict is parsed into one, refusing unknown schema versions) and a dict of numpy arrays
(`speech.codes`, `bg.codes`, optional `speech.mel`, `bg.mel`, `lips`, `face`). `split_row`
turns a WebDataset-style row ({"json": ..., "speech.codes.npy": ...}) into that pair, so a Ray
Data reader can feed `collate` directly.

Tasks and what a sample gets (DESIGN.md "Model"; streams: 0 speech, 1 background):
    tts   speech stream; text + reference voice; no video
    v2s   speech stream; video + text + reference voice
    v2a   background stream; video; no text, no reference
    v2st  speech + background streams in one sequence; video + text + reference voice
The reference voice is in-context infill (F5-TTS): in training a random span of the speech
stream (70-100 % of it) is to be generated and the rest is given as condition; at inference
the first `meta.ref_frames` frames of the speech stream are the given reference (0: none).
The background stream is always generated whole.

Shape key: b = batch, s = streams, n = latent frames, c = latent width, f = lip frames,
g = face frames.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dubforge.model.conditions import label_ids, text_ids
from dubforge.model.spaces import AcousticSpace
from dubforge.schema import (
    STREAMS,
    TASK_STREAMS,
    TASKS,
    TEXT_TASKS,
    VIDEO_TASKS,
    ClipRecord,
    SchemaError,
    mel_profile,
)

Record = tuple[ClipRecord, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Batch:
    """A padded batch. Masks are True on real frames; `span` marks the frames to generate."""

    keys: tuple[str, ...]
    tasks: tuple[str, ...]
    latents: Tensor  # [b, s, n, c] target latents (zero where unknown)
    frame_mask: Tensor  # [b, s, n] bool
    span: Tensor  # [b, s, n] bool, within frame_mask
    stream_ids: Tensor  # [b, s] long
    lengths: Tensor  # [b] frames per stream
    text: Tensor  # [b, n] byte ids, 0 = filler
    has_video: Tensor  # [b] bool: the task uses video and the record has lips
    lips: Tensor | None  # [b, f, 96, 96] uint8
    lip_mask: Tensor | None  # [b, f] bool
    face: Tensor | None  # [b, g, H, W, 3] uint8
    face_mask: Tensor | None  # [b, g] bool
    labels: Tensor  # [b, 4] long
    activity: Tensor  # [b, n] float: speech activity target of L_dur
    activity_mask: Tensor  # [b, n] bool
    # False when every frame of every stream is real (frame_mask all True): self-attention
    # then runs without a key mask, which PyTorch's flash kernel needs. Decided here, on the CPU,
    # so the model never syncs with the device to find out.
    padded: bool

    @property
    def size(self) -> int:
        """Number of samples."""
        return len(self.keys)

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


def as_record(meta: ClipRecord | Mapping[str, Any]) -> ClipRecord:
    """A ClipRecord as it is, or parsed from its JSON dict (SchemaError, a ValueError, names
    what is wrong: an unknown version, a missing field)."""
    return meta if isinstance(meta, ClipRecord) else ClipRecord.from_dict(meta)


def split_row(row: Mapping[str, Any]) -> Record:
    """A WebDataset-style row -> (record, arrays): the record from "json" (dict, str or bytes),
    arrays from every other key holding an ndarray, with a trailing ".npy" dropped."""
    meta = row["json"] if "json" in row else None
    if isinstance(meta, bytes | str):
        meta = json.loads(meta)
    if not isinstance(meta, Mapping):
        raise SchemaError(f"row has no 'json' metadata dict (keys: {sorted(row)})")
    arrays = {
        k.removesuffix(".npy"): np.asarray(v) for k, v in row.items() if isinstance(v, np.ndarray)
    }
    return ClipRecord.from_dict(meta), arrays


def supported_tasks(arrays: Mapping[str, np.ndarray], space: AcousticSpace) -> list[str]:
    """Tasks a record can train: each needs its stems in this space, video tasks need lips."""
    return tasks_for_keys(arrays, {stem: space.array_key(stem) for stem in STREAMS})


def tasks_for_keys(arrays: Mapping[str, Any], stem_keys: Mapping[str, str]) -> list[str]:
    """`supported_tasks` given each stem's array name (no space object needed)."""
    has = {stem: stem_keys[stem] in arrays for stem in STREAMS}
    video = "lips" in arrays
    return [
        t for t in TASKS
        if all(has[s] for s in TASK_STREAMS[t]) and (video or t not in VIDEO_TASKS)
    ]  # fmt: skip


def _choose_task(
    record: Record, space: AcousticSpace, allowed: Sequence[str], rng: np.random.Generator
) -> str:
    options = [t for t in supported_tasks(record[1], space) if t in allowed]
    if not options:
        raise ValueError(
            f"record {record[0].key!r} supports none of the tasks {list(allowed)} in the "
            f"{space.name} space (arrays: {sorted(record[1])}); filter it out or allow another task"
        )
    return options[int(rng.integers(len(options)))]


def _num_frames(meta: ClipRecord, arrays: Mapping[str, np.ndarray], space: AcousticSpace) -> int:
    if "lips" in arrays:
        return round(len(arrays["lips"]) * space.frame_rate / meta.fps)
    return round(meta.duration * space.frame_rate)


def _activity(mel: np.ndarray, n: int, frame_rate: float, db: float, mel_rate: float) -> np.ndarray:
    """Per-latent-frame speech activity from the speech log-mel: frame energy within `db` of
    the clip's loudest frame; mel frames (at `mel_rate`) are picked by nearest earlier time."""
    energy = np.logaddexp.reduce(mel.astype(np.float32), axis=0)  # log of summed magnitude
    active = energy > energy.max() - db / 20 * np.log(10)
    idx = np.minimum((np.arange(n) * mel_rate / frame_rate).astype(int), len(active) - 1)
    return active[idx].astype(np.float32)


def _prepare(
    record: Record, task: str, space: AcousticSpace, train: bool, rng: np.random.Generator,
    span_frac: tuple[float, float], activity_db: float,
) -> dict[str, Any]:  # fmt: skip
    meta, arrays = record
    key = meta.key
    if task not in TASK_STREAMS:
        raise ValueError(f"record {key!r}: unknown task {task!r}; choose from {list(TASKS)}")
    if task in VIDEO_TASKS and "lips" not in arrays:
        raise ValueError(f"record {key!r} has no 'lips' array, which task {task!r} needs")
    stems = TASK_STREAMS[task]
    present = [space.has(dict(arrays), s) for s in stems]
    if any(present):
        space.check_profile(meta.mel_profile)  # a mel space reads one profile only
    if train and not all(present):
        missing = [space.array_key(s) for s, p in zip(stems, present, strict=True) if not p]
        raise ValueError(f"record {key!r} lacks {missing}, the targets of task {task!r}")
    lat = [
        space.latents(dict(arrays), s) if p else None for s, p in zip(stems, present, strict=True)
    ]
    known = [x.shape[0] for x in lat if x is not None]
    n = min(known) if known else _num_frames(meta, arrays, space)
    streams = [x[:n] if x is not None else torch.zeros(n, space.latent_dim) for x in lat]
    spans = [np.ones(n, dtype=bool) for _ in stems]
    if stems[0] == "speech":
        if train:
            length = max(1, round(n * rng.uniform(*span_frac)))
            start = int(rng.integers(0, n - length + 1))
            spans[0] = np.zeros(n, dtype=bool)
            spans[0][start : start + length] = True
        else:
            spans[0] = np.arange(n) >= meta.ref_frames
    activity = None
    if task in VIDEO_TASKS and "speech" in stems and "speech.mel" in arrays:
        if meta.mel_profile is None:
            raise SchemaError(f"record {key!r} has a speech.mel but no mel_profile")
        mel_rate = mel_profile(meta.mel_profile).frame_rate
        mel = np.asarray(arrays["speech.mel"])
        activity = _activity(mel, n, space.frame_rate, activity_db, mel_rate)
    video = task in VIDEO_TASKS
    return {
        "key": str(key), "task": task, "n": n, "streams": streams, "spans": spans,
        "stream_ids": [STREAMS.index(s) for s in stems],
        "text": text_ids(meta.text)[:n] if task in TEXT_TASKS else [],
        "lips": np.asarray(arrays["lips"]) if video else None,
        "face": np.asarray(arrays["face"]) if video and "face" in arrays else None,
        "labels": label_ids(meta.labels), "activity": activity,
    }  # fmt: skip


def _pad_frames(items: list[np.ndarray | None], b: int) -> tuple[Tensor | None, Tensor | None]:
    """Stack per-sample frame arrays [f_i, ...] into [b, f_max, ...] + mask [b, f_max]."""
    shapes = {x.shape[1:] for x in items if x is not None}
    if not shapes:
        return None, None
    if len(shapes) > 1:
        raise ValueError(f"video crops differ in size across the batch: {sorted(shapes)}")
    f = max(len(x) for x in items if x is not None)
    out = torch.zeros((b, f, *shapes.pop()), dtype=torch.uint8)
    mask = torch.zeros(b, f, dtype=torch.bool)
    for i, x in enumerate(items):
        if x is not None:
            out[i, : len(x)] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
            mask[i, : len(x)] = True
    return out, mask


def collate(
    records: Sequence[Record],
    space: AcousticSpace,
    *,
    tasks: str | Sequence[str] | None = None,
    allowed: Sequence[str] = TASKS,
    train: bool = True,
    span_frac: tuple[float, float] = (0.7, 1.0),
    seed: int | np.random.Generator | None = None,
    activity_db: float = 40.0,
) -> Batch:
    """Records -> one padded Batch. `tasks`: one task for all, one per record, or None to draw
    each record's task from `allowed` among those it supports. `train`: random reference span
    and every target array required; else `meta.ref_frames` sets the reference and missing
    targets become zeros of the clip's length (from lips, or end - start). Text longer than
    the clip's frame count is cut to it (F5-TTS needs text no longer than the latents)."""
    if not records:
        raise ValueError("collate needs at least one record")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    records = [(as_record(meta), arrays) for meta, arrays in records]
    if tasks is None:
        chosen = [_choose_task(r, space, allowed, rng) for r in records]
    else:
        chosen = [tasks] * len(records) if isinstance(tasks, str) else list(tasks)
    if len(chosen) != len(records):
        raise ValueError(f"{len(chosen)} tasks given for {len(records)} records")
    items = [
        _prepare(r, t, space, train, rng, span_frac, activity_db)
        for r, t in zip(records, chosen, strict=True)
    ]
    b, n = len(items), max(it["n"] for it in items)
    s = max(len(it["streams"]) for it in items)
    latents = torch.zeros(b, s, n, space.latent_dim)
    frame_mask = torch.zeros(b, s, n, dtype=torch.bool)
    span = torch.zeros(b, s, n, dtype=torch.bool)
    stream_ids = torch.zeros(b, s, dtype=torch.long)
    text = torch.zeros(b, n, dtype=torch.long)
    activity = torch.zeros(b, n)
    activity_mask = torch.zeros(b, n, dtype=torch.bool)
    for i, it in enumerate(items):
        m = it["n"]
        for j, (x, sp, sid) in enumerate(
            zip(it["streams"], it["spans"], it["stream_ids"], strict=True)
        ):
            latents[i, j, :m] = x
            frame_mask[i, j, :m] = True
            span[i, j, :m] = torch.from_numpy(sp)
            stream_ids[i, j] = sid
        text[i, : len(it["text"])] = torch.tensor(it["text"], dtype=torch.long)
        if it["activity"] is not None:
            activity[i, :m] = torch.from_numpy(it["activity"])
            activity_mask[i, :m] = True
    lips, lip_mask = _pad_frames([it["lips"] for it in items], b)
    face, face_mask = _pad_frames([it["face"] for it in items], b)
    return Batch(
        keys=tuple(it["key"] for it in items), tasks=tuple(chosen), latents=latents,
        frame_mask=frame_mask, span=span, stream_ids=stream_ids,
        lengths=torch.tensor([it["n"] for it in items]), text=text,
        has_video=torch.tensor([it["lips"] is not None for it in items]),
        lips=lips, lip_mask=lip_mask, face=face, face_mask=face_mask,
        labels=torch.tensor([it["labels"] for it in items], dtype=torch.long),
        activity=activity, activity_mask=activity_mask, padded=not bool(frame_mask.all()),
    )  # fmt: skip


def to_waves(space: AcousticSpace, latents: Tensor, batch: Batch) -> list[dict[str, np.ndarray]]:
    """Generated latents [b, s, n, c] -> per sample {stem: float32 wave}, cut to its length."""
    out = []
    for i in range(batch.size):
        waves = {}
        for j in range(latents.shape[1]):
            if bool(batch.frame_mask[i, j].any()):
                z = latents[i, j, : int(batch.lengths[i])][None]  # z: [1, n_i, c]
                stem = STREAMS[int(batch.stream_ids[i, j])]
                waves[stem] = space.decode(z)[0].numpy().astype(np.float32)
        out.append(waves)
    return out
