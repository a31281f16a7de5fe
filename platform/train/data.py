"""Training data: shard URIs -> Ray Data (`read_webdataset` + decode) -> per-worker streaming
shard -> frame-budget micro-batches.

Driver side (`plan_stage`): expand each source's glob under `<shards>/<split>/` (train unless the
source says otherwise), check every shard against its index (`<name>.index.json`, written by
ingest: byte size, sample count, sha256) and its tar header, and skip the ones that fail,
counted and logged; more than `data.max_bad_shards` of a stage's shards failing stops the job
before any worker starts. Each shard's samples are counted through its tar headers the way the
reader will see them: a corrupt header mid-shard ends a tar early without an error, so the
samples after it are counted as lost against the index (`data/lost_samples`, the shard named),
and more than `data.max_lost_samples` stops the job.
Source weights become per-epoch repeat factors (`floor(r)` copies plus one more with
probability `r - floor(r)`), so a small corpus replayed at weight 1 next to a large one gets half
the samples of the epoch.

Ray Data side (`build_dataset`): one read task per shard (a tar that breaks mid-read fails only
its own block; `DataContext.max_errored_blocks` is set to what the threshold still allows), then
`decode_rows` parses each record, checks its schema version and packs it into a fixed schema
(key, frames, meta JSON, pickled arrays, error). A bad record becomes a row with `error` set,
so the worker counts it instead of the pipeline crashing.

Worker side (`FrameBatcher`): rows are drawn a task (by the stage's task weights, among those
the record supports), put into a length bucket and emitted when the bucket's padded cost
(samples x longest x streams) would pass `data.frame_budget` or it holds `data.max_samples`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import pickle
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyarrow import fs as pafs

from dubforge.config import ConfigError
from dubforge.model.batch import Record, supported_tasks, tasks_for_keys
from dubforge.schema import FPS, TASK_STREAMS, ClipRecord, mel_profile
from dubforge.storage import is_uri, resolve
from dubforge.train.config import CurriculumConfig, DataSection, Stage

log = logging.getLogger(__name__)
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class ShardCheck:
    uri: str
    samples: int | None  # from the index; None without one
    problem: str = ""  # empty when the shard looks whole
    lost: int = 0  # samples in the index that a reader cannot reach


@dataclass(frozen=True)
class SourcePlan:
    """One resolved source: its good shards, their sample count and the epoch repeat factor."""

    pattern: str
    weight: float
    shards: tuple[str, ...]
    samples: int
    repeat: float = 1.0


@dataclass(frozen=True)
class StagePlan:
    stage: str
    sources: tuple[SourcePlan, ...]
    bad: tuple[ShardCheck, ...]
    lossy: tuple[ShardCheck, ...] = ()  # good shards that end before their index does

    @property
    def lost_samples(self) -> int:
        return sum(c.lost for c in self.lossy)

    @property
    def shards(self) -> int:
        return sum(len(s.shards) for s in self.sources)

    @property
    def epoch_samples(self) -> float:
        return sum(s.samples * s.repeat for s in self.sources)


def join(root: str, pattern: str) -> str:
    """`pattern` under `root` unless it is a URI or an absolute path."""
    if is_uri(pattern) or pattern.startswith("/"):
        return pattern
    return root.rstrip("/") + "/" + pattern


def _uri(filesystem: pafs.FileSystem, path: str, like: str) -> str:
    if not is_uri(like) or like.startswith("file://"):
        return path
    return f"{like.split('://', 1)[0]}://{path}"


def expand(pattern: str) -> list[str]:
    """Shard files (.tar) matching a glob (folder or URI); a folder means every .tar under it."""
    parts = pattern.split("/")
    first = next((i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS)), None)
    base = "/".join(parts[:first]) if first is not None else pattern
    filesystem, base_path = resolve(base)
    info = filesystem.get_file_info(base_path)
    if info.type == pafs.FileType.File:
        return [_uri(filesystem, base_path, pattern)] if first is None else []
    if info.type == pafs.FileType.NotFound:
        return []
    rel_glob = "/".join(parts[first:]) if first is not None else "**.tar"
    found = filesystem.get_file_info(pafs.FileSelector(base_path, recursive=True))
    out = []
    for f in found:
        if f.type != pafs.FileType.File or not f.path.endswith(".tar"):
            continue
        rel = f.path[len(base_path) :].lstrip("/")
        if fnmatch.fnmatch(rel, rel_glob):
            out.append(_uri(filesystem, f.path, pattern))
    return sorted(out)


def check_shard(uri: str) -> ShardCheck:
    """Cheap integrity check without reading the shard: size against its index, tar magic."""
    filesystem, path = resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        return ShardCheck(uri, None, "missing")
    if not info.size:
        return ShardCheck(uri, None, "empty file")
    with filesystem.open_input_file(path) as f:
        head = f.read(512)
    if len(head) < 512 or head[257:262] != b"ustar":
        return ShardCheck(uri, None, "not a tar file (no ustar header)")
    index_path = path.removesuffix(".tar") + ".index.json"
    if filesystem.get_file_info(index_path).type != pafs.FileType.File:
        return ShardCheck(uri, None)
    try:
        with filesystem.open_input_stream(index_path) as f:
            index = json.loads(f.read())
        samples, size = len(index["samples"]), int(index["bytes"])
    except (ValueError, KeyError, TypeError) as e:
        return ShardCheck(uri, None, f"unreadable index ({e})")
    if size != info.size:
        return ShardCheck(uri, samples, f"truncated: index says {size} bytes, file has {info.size}")
    readable = count_samples(filesystem, path)
    return ShardCheck(uri, samples, lost=max(0, samples - readable))


def count_samples(filesystem: pafs.FileSystem, path: str) -> int:
    """Samples a tar reader reaches, counted through the member headers (data is skipped):
    Python's tarfile, which Ray Data reads with, stops silently at an invalid header past the
    start, so this is the number training will see."""
    keys: set[str] = set()
    with filesystem.open_input_file(path) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    folder, _, name = info.name.rpartition("/")
                    keys.add(f"{folder}/{name.split('.', 1)[0]}")
        except tarfile.TarError:
            pass  # what was read before the break is what a reader gets
    return len(keys)


def stage_sources(
    cfg: CurriculumConfig, stage: Stage, weight: float = 1.0, split: str | None = None
) -> list[tuple[str, str, float]]:
    """(field name, pattern, weight) of a stage's sources, replays expanded; `split` overrides
    the sources' split (validation reads the same globs under val/)."""
    i = [s.name for s in cfg.stages].index(stage.name)
    total = sum(s.weight for s in stage.data)
    out = []
    for j, src in enumerate(stage.data):
        w = weight * src.weight / total
        if src.replay is not None:
            earlier = next(s for s in cfg.stages if s.name == src.replay)
            out += stage_sources(cfg, earlier, w, split)
        else:
            pattern = join(cfg.shards, f"{split or src.split}/{src.shards}")
            out.append((f"stages.{i}.data.{j}.shards", pattern, w))
    return out


def plan_stage(cfg: CurriculumConfig, stage: Stage) -> StagePlan:
    """Resolve and check a stage's shards; raises ConfigError naming the field that matched
    nothing, or when more than `data.max_bad_shards` of the shards are bad."""
    merged: dict[str, list[Any]] = {}
    for name, pattern, w in stage_sources(cfg, stage):
        uris = expand(pattern)
        if not uris:
            raise ConfigError(
                f"{name}: {pattern!r} matches no .tar shard; check `shards` ({cfg.shards!r}, "
                "the folder holding ingest's train/ val/ test/) and the glob, or override with "
                "shards=DIR_OR_URI"
            )
        entry = merged.setdefault(pattern, [name, 0.0, uris])
        entry[1] += w
    sources, bad, lossy, total = [], [], [], 0
    for pattern, (_, w, uris) in merged.items():
        checks = [check_shard(u) for u in uris]
        total += len(checks)
        good = [c for c in checks if not c.problem]
        bad += [c for c in checks if c.problem]
        lossy += [c for c in good if c.lost]
        for c in checks:
            if c.problem:
                log.warning("stage %s: skipping shard %s: %s", stage.name, c.uri, c.problem)
            elif c.lost:
                log.warning(
                    "stage %s: shard %s: %d of its %d samples cannot be read (a corrupt "
                    "tar header ends it early)",
                    stage.name,
                    c.uri,
                    c.lost,
                    c.samples,
                )
        if good:
            n = sum(c.samples if c.samples is not None else 0 for c in good)
            sources.append(SourcePlan(pattern, w, tuple(c.uri for c in good), n))
    if bad and len(bad) > cfg.data.max_bad_shards * total:
        listing = "; ".join(f"{c.uri}: {c.problem}" for c in bad[:5])
        raise ConfigError(
            f"stage {stage.name!r}: {len(bad)} of {total} shards are bad, more than "
            f"data.max_bad_shards={cfg.data.max_bad_shards}: {listing}"
        )
    lost = sum(c.lost for c in lossy)
    if lost > cfg.data.max_lost_samples:
        listing = "; ".join(f"{c.uri}: {c.lost} of {c.samples}" for c in lossy[:5])
        raise ConfigError(
            f"stage {stage.name!r}: {lost} samples are lost to shards that end early, more than "
            f"data.max_lost_samples={cfg.data.max_lost_samples}: {listing}. Re-ingest them."
        )
    return StagePlan(stage.name, tuple(_repeats(sources)), tuple(bad), tuple(lossy))


def _repeats(sources: list[SourcePlan]) -> list[SourcePlan]:
    """Repeat factors that give each source its weight's share of an epoch the size of all
    sources together; sources without indexed sample counts keep factor 1."""
    counted = [s for s in sources if s.samples > 0]
    if len(counted) < 2:
        return sources
    total_n = sum(s.samples for s in counted)
    total_w = sum(s.weight for s in counted)
    out = []
    for s in sources:
        if s.samples > 0:
            s = SourcePlan(s.pattern, s.weight, s.shards, s.samples,
                           s.weight / total_w * total_n / s.samples)  # fmt: skip
        out.append(s)
    return out


# ---- Ray Data side ------------------------------------------------------------------------


def usable_tasks(
    arrays: Mapping[str, Any], stem_keys: Mapping[str, str], tasks: Iterable[str]
) -> list[str]:
    """The tasks among `tasks` a record's arrays can train (targets present, lips for video)."""
    supported = tasks_for_keys(arrays, stem_keys)
    return [t for t in tasks if t in supported]


def decode_rows(
    batch: Any, stem_keys: Mapping[str, str], frame_rate: float, repeat: float, seed: int | None,
    tasks: Sequence[str] | None = None,
) -> Any:  # fmt: skip
    """A pandas batch of raw WebDataset rows -> rows of (key, url, frames, meta, arrays, error),
    each kept floor(repeat) times plus once more with probability repeat - floor(repeat).
    With `tasks`, records that can train none of them are dropped here, before the split to
    the workers (a speech-only shard in a V2A stage), so that every worker gets usable rows."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for row in batch.to_dict("records"):
        key, url = str(row.get("__key__", "")), str(row.get("__url__", ""))
        try:
            meta, arrays = _decode(row)
            if tasks is not None and not usable_tasks(arrays, stem_keys, tasks):
                continue
            frames = _frames(meta, arrays, stem_keys, frame_rate)
            item = {"key": key, "url": url, "frames": frames, "meta": json.dumps(meta.to_dict()),
                    "arrays": pickle.dumps(arrays, protocol=5), "error": ""}  # fmt: skip
        except Exception as e:  # noqa: BLE001 - any bad record becomes a counted rejection
            item = {"key": key, "url": url, "frames": 0, "meta": "", "arrays": b"",
                    "error": f"{type(e).__name__}: {e}"}  # fmt: skip
        copies = int(repeat) + int(rng.random() < repeat - int(repeat))
        out += [item] * copies
    return pd.DataFrame(out, columns=["key", "url", "frames", "meta", "arrays", "error"])


def _decode(row: Mapping[str, Any]) -> Record:
    import io

    raw = row["json"] if "json" in row else None
    if not isinstance(raw, bytes | str):
        raise ValueError("record has no json member")
    meta = ClipRecord.from_dict(json.loads(raw))
    arrays = {}
    for col, value in row.items():
        if col.endswith(".npy") and isinstance(value, bytes):
            arrays[col.removesuffix(".npy")] = np.load(io.BytesIO(value), allow_pickle=False)
    return meta, arrays


def _frames(
    meta: ClipRecord, arrays: Mapping[str, np.ndarray], stem_keys: Mapping[str, str],
    frame_rate: float,
) -> int:  # fmt: skip
    lengths = [arrays[k].shape[-1] for k in stem_keys.values() if k in arrays]
    if lengths:
        return int(max(lengths))
    return round(meta.duration * frame_rate)


def build_dataset(
    plan: StagePlan, stem_keys: Mapping[str, str], frame_rate: float, max_bad_shards: float,
    seed: int | None = None, tasks: Sequence[str] | None = None,
) -> Any:  # fmt: skip
    """The stage's Ray Dataset of decoded rows (all sources, repeat factors applied, records
    usable for `tasks` only), its blocks in random order so that every worker's split mixes
    the sources."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = max(0, math.floor(max_bad_shards * (plan.shards + len(plan.bad))) -
                                 len(plan.bad))  # fmt: skip
    parts = []
    for i, src in enumerate(plan.sources):
        ds = ray.data.read_webdataset(
            list(src.shards), decoder=None, override_num_blocks=len(src.shards)
        )
        parts.append(
            ds.map_batches(
                decode_rows, batch_format="pandas", batch_size=16,
                fn_kwargs={"stem_keys": dict(stem_keys), "frame_rate": frame_rate,
                           "repeat": src.repeat, "seed": None if seed is None else seed + i,
                           "tasks": list(tasks) if tasks is not None else None},
            )
        )  # fmt: skip
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return ds.randomize_block_order(seed=seed)


# ---- worker side --------------------------------------------------------------------------


@dataclass
class DataCounters:
    rows: int = 0
    bad_records: int = 0
    no_task: int = 0
    cropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"data/rows": self.rows, "data/bad_records": self.bad_records,
                "data/no_task": self.no_task, "data/cropped": self.cropped}  # fmt: skip


@dataclass(frozen=True)
class Item:
    record: Record
    task: str
    frames: int

    @property
    def cost(self) -> int:
        return self.frames * len(TASK_STREAMS[self.task])


def bucket_edges(max_frames: int, buckets: int, min_frames: int = 25) -> list[int]:
    """Geometric upper edges of length buckets from `min_frames` to `max_frames`."""
    if buckets == 1:
        return [max_frames]
    ratio = (max_frames / min_frames) ** (1 / (buckets - 1))
    edges = sorted({max(1, round(min_frames * ratio**i)) for i in range(buckets - 1)})
    return [e for e in edges if e < max_frames] + [max_frames]


class FrameBatcher:
    """Rows -> micro-batches of Items whose padded cost stays within the frame budget."""

    def __init__(
        self, space: Any, tasks: Mapping[str, float], data: DataSection,
        rng: np.random.Generator, counters: DataCounters,
    ) -> None:  # fmt: skip
        self.space, self.data, self.rng, self.counters = space, data, rng, counters
        self.tasks = dict(tasks)
        self.edges = bucket_edges(data.max_frames, data.buckets)
        self.buckets: list[list[Item]] = [[] for _ in self.edges]
        self.bad_log_budget = 20

    def _task(self, record: Record) -> str | None:
        options = [t for t in supported_tasks(record[1], self.space) if t in self.tasks]
        if not options:
            return None
        w = np.array([self.tasks[t] for t in options], dtype=float)
        return options[int(self.rng.choice(len(options), p=w / w.sum()))]

    def add(self, row: Mapping[str, Any]) -> Iterator[list[Item]]:
        """Take one decoded row; yields a micro-batch when one is full."""
        self.counters.rows += 1
        if row["error"]:
            self.counters.bad_records += 1
            reason = str(row["error"]).split(":", 1)[0]
            self.counters.errors[reason] = self.counters.errors.get(reason, 0) + 1
            if self.bad_log_budget > 0:
                self.bad_log_budget -= 1
                log.warning("rejected record %s in %s: %s", row["key"], row["url"], row["error"])
            return
        record = (ClipRecord.from_dict(json.loads(row["meta"])), pickle.loads(row["arrays"]))
        task = self._task(record)
        if task is None:
            self.counters.no_task += 1
            return
        frames = int(row["frames"])
        if frames > self.data.max_frames:
            record = crop(record, self.space, self.data.max_frames, self.rng)
            frames = self.data.max_frames
            self.counters.cropped += 1
        item = Item(record, task, frames)
        i = next(k for k, e in enumerate(self.edges) if frames <= e)
        bucket = self.buckets[i]
        worst = max([it.cost for it in bucket] + [item.cost])
        if bucket and ((len(bucket) + 1) * worst > self.data.frame_budget or
                       len(bucket) >= self.data.max_samples):  # fmt: skip
            self.buckets[i] = [item]
            yield bucket
        else:
            bucket.append(item)
            if len(bucket) * worst >= self.data.frame_budget:
                self.buckets[i] = []
                yield bucket

    def flush(self) -> Iterator[list[Item]]:
        """The partly filled buckets, at the end of an epoch."""
        for i, bucket in enumerate(self.buckets):
            if bucket:
                self.buckets[i] = []
                yield bucket


def micro_batches(rows: Iterable[Mapping[str, Any]], batcher: FrameBatcher) -> Iterator[list[Item]]:
    for row in rows:
        yield from batcher.add(row)
    yield from batcher.flush()


def iter_rows(batches: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Rows of pandas batches from `DataIterator.iter_batches(batch_format="pandas")`."""
    for df in batches:
        yield from df.to_dict("records")


def _rate(name: str, meta: ClipRecord) -> float:
    """Frames per second of a record array."""
    if name.endswith(".mel"):
        if meta.mel_profile is None:
            raise ValueError(f"record {meta.key!r} has {name} but no mel_profile")
        return mel_profile(meta.mel_profile).frame_rate
    if name.endswith(".codes"):
        return meta.codec.frame_rate
    if name == "lips":
        return float(meta.fps)
    if name == "face":
        return float(meta.face_fps or FPS)
    raise ValueError(f"record {meta.key!r}: no frame rate known for array {name!r}")


def crop(record: Record, space: Any, max_frames: int, rng: np.random.Generator) -> Record:
    """A random window of `max_frames` latent frames (on a video-frame boundary) of a long
    record: every time-indexed array is cut to the same seconds; the text is kept whole (no
    alignment), so the sample learns a partial-text infill."""
    meta, arrays = record
    fps = float(meta.fps)
    dur = max_frames / space.frame_rate
    start = float(rng.uniform(0, max(0.0, meta.duration - dur)))
    start = math.floor(start * fps) / fps
    out = {}
    for name, arr in arrays.items():
        r = _rate(name, meta)
        a, n = round(start * r), max(1, math.floor(dur * r + 1e-6))
        out[name] = arr[..., a : a + n] if name.endswith((".mel", ".codes")) else arr[a : a + n]
    meta = dataclasses.replace(meta, start=meta.start + start, end=meta.start + start + dur)
    return meta, out
