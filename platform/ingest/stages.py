"""The per-clip stages as Ray Data batch functions over one column, "row".

A row is a dict whose keys differ from stage to stage and from clip to clip (a rejected clip
carries no arrays), so it travels pickled: Ray Data would otherwise turn it into an Arrow struct
column and fail to concatenate blocks whose structs differ.

Each stage passes rejected and input-level rows through untouched, works on pending clip rows
through `guarded`, and turns any failure on one clip into that row's recorded rejection, never
a crashed run. Stages
that hold a model are classes: Ray builds them once per actor in an actor pool.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from dubforge import storage
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.decode import decode_audio, decode_video
from dubforge.ingest.energy import judge, required_stems
from dubforge.ingest.plan import INPUT_CACHE, unexpected
from dubforge.ingest.probe import MediaError
from dubforge.ingest.records import Rejection
from dubforge.schema import FPS, mel_profile

Batch = dict[str, np.ndarray]


def pack(row: dict[str, Any]) -> bytes:
    return pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes) -> dict[str, Any]:
    return pickle.loads(data)


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    """The rows of a batch."""
    return [unpack(r) for r in batch["row"]]


def batch_of(packed: list[bytes]) -> Batch:
    """A batch of packed rows."""
    out = np.empty(len(packed), dtype=object)
    out[:] = packed
    return {"row": out}


def _batch(rows: list[dict[str, Any]]) -> Batch:
    return batch_of([pack(r) for r in rows])


def _pending(row: dict[str, Any]) -> bool:
    return row["status"] == "pending" and row["clip"] is not None


def _fail(row: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    for key in ("audio", "speech", "background", "frames"):
        row.pop(key, None)
    return {**row, "status": "rejected", "reason": reason, "detail": detail[:1000]}


def guarded(
    stage: str, fn: Callable[[dict[str, Any]], dict[str, Any]], row: dict[str, Any]
) -> dict[str, Any]:
    """`fn(row)` for a pending clip row; whatever it raises becomes that row's rejection
    (Rejection: its reason; anything else: `<stage>_error`, counted by the error budget)."""
    if not _pending(row):
        return row
    try:
        return fn(row)
    except Rejection as e:
        return _fail(row, e.reason, e.detail)
    except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
        return unexpected(row, stage, e)


def _map(stage: str, fn: Callable[[dict[str, Any]], dict[str, Any]], batch: Batch) -> Batch:
    return _batch([guarded(stage, fn, r) for r in rows_of(batch)])


def _threads() -> None:
    import torch

    torch.set_num_threads(1)  # one core per actor; the pipeline runs stages side by side


def _needs_separation(row: dict[str, Any]) -> bool:
    """Movie clips and audio-only media come mixed; speech corpora are clean speech."""
    return "speech" not in row and row["kind"] in ("movie", "audio")


class Decode:
    """Audio (mono, at the codec rate), delivered stems, and 25 fps frames of each clip."""

    def __init__(self, cfg: IngestConfig, sample_rate: int) -> None:
        self.cfg, self.sr = cfg, sample_rate

    def __call__(self, batch: Batch) -> Batch:
        return _map("decode", self._one, batch)

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        clip, media, inp = row["clip"], row["media"], row["input"]
        start, dur = clip["start"], clip["end"] - clip["start"]
        timeout = self.cfg.timeouts.decode
        row["audio"] = decode_audio(media["path"], start, dur, self.sr, timeout=timeout)
        if inp.get("stems") and self.cfg.separator.use_stems:
            for name in ("speech", "background"):
                try:
                    local = storage.localize(inp["stems"][name], INPUT_CACHE)
                except OSError as e:
                    raise MediaError("missing_file", f"{name} stem: {e}") from e
                row[name] = decode_audio(local, start, dur, self.sr, timeout=timeout)
        if row["kind"] == "movie" and self.cfg.faces.enabled:
            row["frames"] = decode_video(
                media["path"], start, dur, media["width"], media["height"],
                self.cfg.faces.max_side, timeout=timeout,
            )  # fmt: skip
        return row


def decode(batch: Batch, cfg: IngestConfig, sample_rate: int) -> Batch:
    """Decode as a stateless task: Ray fuses it into the next actor stage, so decoded frames go
    straight to face tracking instead of through the object store."""
    return Decode(cfg, sample_rate)(batch)


class Separate:
    """Speech/background separation for clips that came mixed and without delivered stems."""

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
        return _map("separate", self._one, batch)

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        if _needs_separation(row):
            try:
                row["speech"], row["background"] = self.model.separate(row["audio"], self.sr)
            except Exception as e:  # noqa: BLE001 - the model failing on one clip is its record
                raise Rejection("separation_error", f"{type(e).__name__}: {e}") from e
        return row


def _require_one(row: dict[str, Any]) -> dict[str, Any]:
    if _needs_separation(row) and row["kind"] == "movie":
        raise Rejection("no_separator", "no delivered stems and separator.model_dir unset")
    return row


def require_stems(batch: Batch) -> Batch:
    """Without a separator, a movie clip needs delivered stems; audio-only media is then taken
    as speech (noted in its input row), like a speech corpus."""
    return _map("separate", _require_one, batch)


def energy(batch: Batch, cfg: IngestConfig) -> Batch:
    """DualDub's filter: reject clips whose required stems are below the threshold."""

    def one(row: dict[str, Any]) -> dict[str, Any]:
        tasks = cfg.movie_tasks if row["kind"] == "movie" else cfg.speech_tasks
        if row["kind"] != "movie" and "speech" not in row:
            row["speech"] = row["audio"]  # speech corpora and unseparated audio-only media
        stems = {k: row[k] for k in ("speech", "background") if k in row}
        levels, reason, detail = judge(stems, required_stems(tasks), cfg.energy_threshold_db)
        row["energy_db"] = levels
        if reason:
            raise Rejection(reason, detail)
        return row

    return _map("energy", one, batch)


class Faces:
    """The speaking face's crops (face at `face_fps`, lips at 25 fps) for movie clips."""

    def __init__(self, cfg: IngestConfig, sample_rate: int) -> None:
        from dubforge.ingest.faces import FaceTracker

        self.cfg, self.sr = cfg, sample_rate
        self.tracker = FaceTracker(face_size=cfg.faces.face_size, lip_size=cfg.faces.lip_size)

    def __call__(self, batch: Batch) -> Batch:
        return _map("faces", self._one, batch)

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        frames = row.pop("frames", None)
        if frames is None:
            return row
        track = self.tracker.track(frames, row["speech"], self.sr)
        row["face_coverage"] = round(float(track.coverage), 3)
        row["n_faces"] = int(track.n_faces)
        if track.coverage >= self.cfg.faces.min_coverage:
            row["lips"] = track.lips
            row["face"] = track.face[:: FPS // self.cfg.faces.face_fps]
        elif not self.cfg.faces.keep_faceless:
            raise Rejection("low_face_coverage", f"face in {track.coverage:.0%} of frames")
        return row


class Tokenize:
    """Codec codes (and optionally log-mel in a vocoder's profile) of each clip's speech and
    background. The codec runs on `codec.torch_device` and encodes every stem of every pending
    clip of a batch in one call (a GPU idles on one clip at a time)."""

    STEMS = (("speech", "speech"), ("background", "bg"))  # row stem -> record array prefix

    def __init__(self, cfg: IngestConfig) -> None:
        from dubforge.ingest.tokenize import CodecTokenizer

        _threads()
        self.cfg = cfg
        self.codec = CodecTokenizer(
            cfg.codec.name_or_path, device=cfg.codec.torch_device, bandwidth=cfg.codec.bandwidth
        )
        self.profile = mel_profile(cfg.codec.mel) if cfg.codec.mel else None

    def __call__(self, batch: Batch) -> Batch:
        rows = rows_of(batch)
        codes = self._encode_together(rows)
        return _batch(
            [
                guarded("tokenize", functools.partial(self._one, codes=c), row)
                for row, c in zip(rows, codes, strict=True)
            ]
        )

    def _encode_together(self, rows: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """{stem: codes} per row, from one batched encode of every pending row's stems; all
        empty when that encode fails, so each clip is then encoded alone and only a bad one
        is rejected. Batched codes may differ from single ones at a rare frame (a near-tie
        flipped by batched rounding: CodecTokenizer.encode_batch)."""
        out: list[dict[str, np.ndarray]] = [{} for _ in rows]
        jobs = [
            (i, stem)
            for i, row in enumerate(rows)
            if _pending(row)
            for stem, _ in self.STEMS
            if row.get(stem) is not None
        ]
        if not jobs:
            return out
        try:
            codes = self.codec.encode_batch([rows[i][stem] for i, stem in jobs])
        except Exception as e:  # noqa: BLE001 - the per-clip retry in _one records the culprit
            reason = f"{type(e).__name__}: {e}"
            logging.getLogger(__name__).warning("batched encode failed (%s); clip by clip", reason)
            return out
        for (i, stem), c in zip(jobs, codes, strict=True):
            out[i][stem] = c
        return out

    def _mel(self, wave: np.ndarray) -> np.ndarray:
        from dubforge.mel import log_mel, resample_for

        assert self.profile is not None
        wave = resample_for(wave, self.codec.sample_rate, self.profile)
        return log_mel(wave, self.profile.sample_rate, self.profile).astype(np.float16)

    def _one(self, row: dict[str, Any], codes: dict[str, np.ndarray]) -> dict[str, Any]:
        row.pop("audio", None)
        for stem, short in self.STEMS:
            wave = row.pop(stem, None)
            if wave is None:
                continue
            row[f"{short}.codes"] = codes[stem] if stem in codes else self.codec.encode(wave)
            if self.profile is not None:
                row[f"{short}.mel"] = self._mel(wave)
        row["codec"] = {
            "name": self.codec.codec_name, "sample_rate": self.codec.sample_rate,
            "frame_rate": self.codec.frame_rate, "codebooks": self.codec.n_q,
            "path": self.cfg.codec.name_or_path,
            "random_weights": self.codec.random_weights,
        }  # fmt: skip
        row["mel_profile"] = self.profile.name if self.profile else None
        return row
