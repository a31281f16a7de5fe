"""The per-clip stages as Ray Data batch functions over one column, "row".

A row is a dict whose keys differ from stage to stage and from clip to clip (a rejected clip
carries no arrays), so it travels pickled: Ray Data would otherwise turn it into an Arrow struct
column and fail to concatenate blocks whose structs differ.

Each stage passes rejected and input-level rows through untouched, works on pending clip rows,
and turns a failure on one clip into that row's recorded rejection, never a crashed run. Stages
that hold a model are classes: Ray builds them once per actor in an actor pool.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from dubforge.ingest.config import IngestConfig
from dubforge.ingest.decode import FPS, decode_audio, decode_video
from dubforge.ingest.energy import judge, required_stems
from dubforge.ingest.probe import MediaError

Batch = dict[str, np.ndarray]


def pack(row: dict[str, Any]) -> bytes:
    return pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes) -> dict[str, Any]:
    return pickle.loads(data)


def _rows(batch: Batch) -> list[dict[str, Any]]:
    return [unpack(r) for r in batch["row"]]


def _batch(rows: list[dict[str, Any]]) -> Batch:
    out = np.empty(len(rows), dtype=object)
    out[:] = [pack(r) for r in rows]
    return {"row": out}


def _pending(row: dict[str, Any]) -> bool:
    return row["status"] == "pending" and row["clip"] is not None


def _fail(row: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    for key in ("audio", "speech", "background", "frames"):
        row.pop(key, None)
    return {**row, "status": "rejected", "reason": reason, "detail": detail[:500]}


def _threads() -> None:
    import torch

    torch.set_num_threads(1)  # one core per actor; the pipeline runs stages side by side


class Decode:
    """Audio (mono, at the codec rate), delivered stems, and 25 fps frames of each clip."""

    def __init__(self, cfg: IngestConfig, sample_rate: int) -> None:
        self.cfg, self.sr = cfg, sample_rate

    def __call__(self, batch: Batch) -> Batch:
        return _batch([self._one(r) if _pending(r) else r for r in _rows(batch)])

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        clip, media, inp = row["clip"], row["media"], row["input"]
        start, dur = clip["start"], clip["end"] - clip["start"]
        try:
            row["audio"] = decode_audio(media["path"], start, dur, self.sr)
            if inp.get("stems") and self.cfg.separator.use_stems:
                from dubforge import storage
                from dubforge.ingest.plan import _CACHE

                for name in ("speech", "background"):
                    try:
                        local = storage.localize(inp["stems"][name], _CACHE)
                    except OSError as e:
                        raise MediaError("missing_file", f"{name} stem: {e}") from e
                    row[name] = decode_audio(local, start, dur, self.sr)
            if inp["kind"] == "movie" and self.cfg.faces.enabled:
                row["frames"] = decode_video(
                    media["path"],
                    start,
                    dur,
                    media["width"],
                    media["height"],
                    self.cfg.faces.max_side,
                )
        except MediaError as e:
            return _fail(row, e.reason, e.detail)
        return row


def decode(batch: Batch, cfg: IngestConfig, sample_rate: int) -> Batch:
    """Decode as a stateless task: Ray fuses it into the next actor stage, so decoded frames go
    straight to face tracking instead of through the object store."""
    return Decode(cfg, sample_rate)(batch)


class Separate:
    """Speech/background separation for movie clips that came without delivered stems (speech
    corpora are clean speech already)."""

    def __init__(self, cfg: IngestConfig, sample_rate: int) -> None:
        from dubforge.ingest.separate import Separator

        _threads()
        self.sr = sample_rate
        self.model = Separator(
            cfg.separator.model_dir,
            cfg.separator.model_filename,
            use_gpu=cfg.separator.num_gpus > 0,
        )

    def __call__(self, batch: Batch) -> Batch:
        out = []
        for row in _rows(batch):
            if _pending(row) and "speech" not in row and row["input"]["kind"] == "movie":
                try:
                    row["speech"], row["background"] = self.model.separate(row["audio"], self.sr)
                except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
                    row = _fail(row, "separation_error", f"{type(e).__name__}: {e}")
            out.append(row)
        return _batch(out)


def require_stems(batch: Batch) -> Batch:
    """Without a separator, a clip needs delivered stems; record the ones that have none."""
    out = []
    for row in _rows(batch):
        if _pending(row) and "speech" not in row and row["input"]["kind"] == "movie":
            row = _fail(row, "no_separator", "no delivered stems and separator.model_dir unset")
        out.append(row)
    return _batch(out)


def energy(batch: Batch, cfg: IngestConfig) -> Batch:
    """DualDub's filter: reject clips whose required stems are below the threshold."""
    out = []
    for row in _rows(batch):
        if _pending(row):
            tasks = cfg.movie_tasks if row["input"]["kind"] == "movie" else cfg.speech_tasks
            stems = {k: row[k] for k in ("speech", "background") if k in row}
            if row["input"]["kind"] == "speech" and "speech" not in stems:
                stems = {"speech": row["audio"]}  # a speech corpus is speech
                row["speech"] = row["audio"]
            levels, reason, detail = judge(stems, required_stems(tasks), cfg.energy_threshold_db)
            row["energy_db"] = levels
            if reason:
                row = _fail(row, reason, detail)
        out.append(row)
    return _batch(out)


class Faces:
    """The speaking face's crops (face at `face_fps`, lips at 25 fps) for movie clips."""

    def __init__(self, cfg: IngestConfig, sample_rate: int) -> None:
        from dubforge.ingest.faces import FaceTracker

        self.cfg, self.sr = cfg, sample_rate
        self.tracker = FaceTracker(face_size=cfg.faces.face_size, lip_size=cfg.faces.lip_size)

    def __call__(self, batch: Batch) -> Batch:
        out = []
        for row in _rows(batch):
            frames = row.pop("frames", None)
            if _pending(row) and frames is not None:
                try:
                    track = self.tracker.track(frames, row["speech"], self.sr)
                except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
                    out.append(_fail(row, "face_error", f"{type(e).__name__}: {e}"))
                    continue
                row["face_coverage"] = round(float(track.coverage), 3)
                row["n_faces"] = int(track.n_faces)
                if track.coverage >= self.cfg.faces.min_coverage:
                    row["lips"] = track.lips
                    row["face"] = track.face[:: FPS // self.cfg.faces.face_fps]
                elif not self.cfg.faces.keep_faceless:
                    row = _fail(row, "low_face_coverage", f"face in {track.coverage:.0%} of frames")
            out.append(row)
        return _batch(out)


class Tokenize:
    """Codec codes (and optionally log-mel) of each clip's speech and background."""

    def __init__(self, cfg: IngestConfig) -> None:
        from dubforge.ingest.tokenize import CodecTokenizer

        _threads()
        self.cfg = cfg
        self.codec = CodecTokenizer(cfg.codec.name_or_path, bandwidth=cfg.codec.bandwidth)

    def __call__(self, batch: Batch) -> Batch:
        from dubforge.ingest.tokenize import log_mel

        out = []
        for row in _rows(batch):
            if _pending(row):
                row.pop("audio", None)
                for stem, short in (("speech", "speech"), ("background", "bg")):
                    wave = row.pop(stem, None)
                    if wave is None:
                        continue
                    row[f"{short}.codes"] = self.codec.encode(wave)
                    if self.cfg.codec.mel and self.codec.sample_rate == 24000:
                        row[f"{short}.mel"] = log_mel(wave, 24000)
                row["codec"] = {
                    "name": self.codec.codec_name, "sample_rate": self.codec.sample_rate,
                    "frame_rate": self.codec.frame_rate, "codebooks": self.codec.n_q,
                    "path": self.cfg.codec.name_or_path,
                    "random_weights": self.codec.random_weights,
                }  # fmt: skip
            out.append(row)
        return _batch(out)
