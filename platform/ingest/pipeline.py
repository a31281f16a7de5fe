"""The ingest job: discover -> plan units -> Ray Data stages -> shards + manifest + summary.

    units (from_items) --flat_map(plan_unit)--> rows (one per input, clip and dropped cue)
      --decode (tasks)--> --Separate (actors, only when needed)--> --energy (tasks)-->
      --Faces (actors)--> --Tokenize (actors)--> driver: UnitWriter (shards, manifest parts)

Stages stream: the driver writes a unit as soon as its last row arrives. Resume: units that have
a manifest part are skipped on a rerun; half-written shards of the others are removed first.

Accounting: every file under the input roots ends as exactly one manifest row (an input row,
or a file row for sidecars and files not used, with the reason); `reconcile` checks this at
the end and fails the job, listing the files, when one is missing. Every failure is contained
to its input or clip; more than `max_error_fraction` of the units failing with unexpected
errors (a bug rather than bad media) stops the job.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dubforge import storage
from dubforge.ingest import stages
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.discover import Discovery, discover
from dubforge.ingest.plan import make_units, plan_unit
from dubforge.ingest.records import ManifestRow
from dubforge.ingest.split import assign_split
from dubforge.ingest.writer import (
    MANIFEST_SCHEMA,
    RemoteOutput,
    UnitWriter,
    clean_unfinished,
    finished_units,
    parts_dir,
)
from dubforge.runtime import ray_session, workspace
from dubforge.schema import SPLITS


def codec_sample_rate(name_or_path: str) -> int:
    """The codec's sample rate from its config alone (no weights loaded in the driver)."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(name_or_path).sampling_rate)
    except OSError as e:
        raise RuntimeError(
            f"codec {name_or_path!r} is not a local transformers model folder: save one with "
            "save_pretrained and set codec.name_or_path to it"
        ) from e


def plan_rows(unit: dict[str, Any], cfg: IngestConfig) -> list[dict[str, Any]]:
    """`plan_unit` as a Ray Data flat_map: rows packed into the single object column."""
    return [{"row": stages.pack(r)} for r in plan_unit(unit, cfg)]


def build_dataset(units: list[dict[str, Any]], cfg: IngestConfig, sample_rate: int):  # noqa: ANN201
    """The Ray Data plan (lazy); one place decides pools, batch sizes and GPUs."""
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    ds = ds.flat_map(functools.partial(plan_rows, cfg=cfg))
    kw = {"cfg": cfg, "sample_rate": sample_rate}
    # decode holds no model: as a task it fuses with the stages after it (bench/ingest_speed.py:
    # object-store peak 1.6 GB -> 0.13 GB and 1.5x the throughput of a decode actor pool)
    ds = ds.map_batches(functools.partial(stages.decode, **kw), batch_size=4)
    if cfg.separator.model_dir:
        ds = ds.map_batches(
            stages.Separate,
            fn_constructor_kwargs=kw,
            batch_size=cfg.separator.batch_size,
            num_gpus=cfg.separator.num_gpus,
            compute=ActorPoolStrategy(size=cfg.separator.actors),
        )
    else:
        ds = ds.map_batches(stages.require_stems, batch_size=8)
    ds = ds.map_batches(functools.partial(stages.energy, cfg=cfg), batch_size=8)
    if cfg.faces.enabled:
        ds = ds.map_batches(
            stages.Faces,
            fn_constructor_kwargs=kw,
            batch_size=1,
            compute=ActorPoolStrategy(size=cfg.faces.actors),
        )
    return ds.map_batches(
        stages.Tokenize,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=cfg.codec.batch_size,
        num_gpus=cfg.codec.num_gpus,
        compute=ActorPoolStrategy(size=cfg.codec.actors),
    )


def run_in_process(units: list[dict[str, Any]], cfg: IngestConfig, sample_rate: int):  # noqa: ANN201
    """The same stages in the same order in this process, one unit at a time, without Ray:
    yields finished rows. For debugging a stage and for the sequential baseline of
    bench/ingest_speed.py."""
    decode = stages.Decode(cfg, sample_rate)
    separate = stages.Separate(cfg, sample_rate) if cfg.separator.model_dir else None
    faces = stages.Faces(cfg, sample_rate) if cfg.faces.enabled else None
    tokenize = stages.Tokenize(cfg)
    for unit in units:
        for item in plan_rows(unit, cfg):
            batch = decode(stages.batch_of([item["row"]]))
            batch = separate(batch) if separate else stages.require_stems(batch)
            batch = stages.energy(batch, cfg)
            batch = faces(batch) if faces else batch
            yield from stages.rows_of(tokenize(batch))


def file_rows(found: Discovery, inputs: dict[str, str]) -> list[dict[str, Any]]:
    """Manifest rows of the files that are not inputs (sidecars, orphans, not media)."""
    return [
        ManifestRow(
            row_type="file",
            input_uri=f.uri,
            input_id=f.owner,
            clip_no=-1,
            status=f.status,
            reason=f.reason,
            detail=f.detail,
            split=inputs.get(f.owner, ""),
        ).to_dict()
        for f in found.files
    ]


def reconcile(found: Discovery, rows: list[dict[str, Any]]) -> None:
    """Every discovered file has exactly one file/input row: raise naming those that do not."""
    counts = Counter(r["input_uri"] for r in rows if r["row_type"] in ("file", "input"))
    listed = set(found.listed)
    missing = sorted(u for u in listed if counts[u] == 0)
    twice = sorted(u for u in listed if counts[u] > 1)
    if missing or twice:
        raise RuntimeError(
            f"ingest could not account for {len(missing)} file(s) and counted {len(twice)} "
            f"twice; the manifest is incomplete. Missing: {missing[:20]} Twice: {twice[:20]}"
        )


def summarize(
    out: Path, wall: float, run_rows: list[dict[str, Any]], files: list[dict[str, Any]]
) -> dict[str, Any]:
    """Combine the manifest parts and the file rows into manifest.parquet and the summary (all
    units in `out`; `this_run` covers the units this invocation processed)."""
    parts = sorted(parts_dir(out).glob("*.parquet"))
    rows = [r for p in parts for r in pq.read_table(p).to_pylist()] + list(files)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")
    inputs = [r for r in rows if r["row_type"] == "input"]
    clips = [r for r in rows if r["row_type"] == "clip"]
    cues = [r for r in rows if r["row_type"] == "cue"]
    other = [r for r in rows if r["row_type"] == "file"]
    accepted = [r for r in clips if r["status"] == "accepted"]
    run_seconds = sum(r["end"] for r in run_rows if r["row_type"] == "input")
    summary = {
        "files": len(inputs) + len(other),
        "inputs": len(inputs),
        "inputs_accepted": sum(r["status"] == "accepted" for r in inputs),
        "inputs_rejected": dict(Counter(r["reason"] for r in inputs if r["status"] == "rejected")),
        "files_used": sum(r["status"] == "accepted" for r in other),
        "files_not_used": dict(Counter(r["reason"] for r in other if r["status"] == "rejected")),
        "clips_accepted": len(accepted),
        "clips_rejected": dict(Counter(r["reason"] for r in clips if r["status"] == "rejected")),
        "cues_dropped": dict(Counter(r["reason"] for r in cues)),
        "clips_by_split": {s: sum(r["split"] == s for r in accepted) for s in SPLITS},
        "hours_in": round(sum(r["end"] for r in inputs if r["status"] == "accepted") / 3600, 4),
        "hours_out": round(sum(r["end"] - r["start"] for r in accepted) / 3600, 4),
        "shards": len(list((out / "shards").glob("*/*.tar"))),
        "this_run": {
            "inputs": sum(r["row_type"] == "input" for r in run_rows),
            "media_seconds": round(run_seconds, 1),
            "wall_seconds": round(wall, 1),
            "media_seconds_per_second": round(run_seconds / wall, 2) if wall > 0 else 0.0,
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned two-column table, rejections broken down by reason."""
    lines: list[tuple[str, str]] = []
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append((key, str(sum(value.values())) if key != "this_run" else ""))
            lines += [(f"  {k}", str(v)) for k, v in sorted(value.items())]
        else:
            lines.append((key, str(value)))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in lines)


def _check_cluster(cfg: IngestConfig, resources: Mapping[str, float] | None = None) -> None:
    """Actor pools that cannot all be placed make Ray Data wait forever: refuse up front when
    the cluster's `resources` (default: `ray.cluster_resources()`) lack the CPUs or the GPUs
    the pools ask for (GPUs: actors x num_gpus of the codec pool and of the separator pool)."""
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    have = resources.get("CPU", 0)
    if have < cfg.min_cpus():
        raise RuntimeError(
            f"the Ray cluster has {have:g} CPUs; this ingest config needs {cfg.min_cpus()} "
            "(one per codec/faces/separator actor + 2): add nodes or lower the *.actors counts"
        )
    pools = {"codec": cfg.codec.actors * cfg.codec.num_gpus}
    if cfg.separator.model_dir:
        pools["separator"] = cfg.separator.actors * cfg.separator.num_gpus
    need, gpus = sum(pools.values()), resources.get("GPU", 0)
    if need > gpus:
        detail = ", ".join(f"{name} {n:g}" for name, n in pools.items() if n)
        raise RuntimeError(
            f"the Ray cluster has {gpus:g} GPUs; this ingest config needs {need:g} ({detail}: "
            "actors x num_gpus per pool): add GPU nodes, or lower codec/separator actors or "
            "num_gpus (0 runs that pool on CPUs)"
        )


def _staging(uri: str) -> Path:
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return workspace() / "staging" / f"ingest-{digest}"


def _rows(todo: list[dict[str, Any]], cfg: IngestConfig, sample_rate: int, local: bool):  # noqa: ANN202
    if local:
        yield from run_in_process(todo, cfg, sample_rate)
        return
    cpus = cfg.num_cpus or max(cfg.min_cpus(), os.cpu_count() or 1)
    with ray_session(num_cpus=cpus):
        _check_cluster(cfg)
        for item in build_dataset(todo, cfg, sample_rate).iter_rows():
            yield stages.unpack(item["row"])


def _check_budget(writer: UnitWriter, todo: int, cfg: IngestConfig) -> None:
    """Stop when unexpected errors exceed the budget: a systematic bug must not quietly
    reject a whole corpus."""
    failed = len(writer.unexpected_units)
    if failed > cfg.max_error_fraction * todo:
        raise RuntimeError(
            f"{failed} of {todo} units failed with unexpected errors (more than "
            f"max_error_fraction={cfg.max_error_fraction}): this looks like a bug or a broken "
            f"environment, not bad media. Units: {sorted(writer.unexpected_units)[:10]}; the "
            "manifest parts in the output name each error (reason *_error). Finished units "
            "are kept; a rerun resumes."
        )


def run(cfg: IngestConfig, local: bool = False) -> dict[str, Any]:
    """Ingest everything under cfg.input into cfg.output (a folder or a URI); returns the
    summary. Units already in the output are skipped. `local`: run the stages in this
    process without Ray (same code, one unit at a time)."""
    remote = (
        None if storage.is_local(cfg.output) else RemoteOutput(cfg.output, _staging(cfg.output))
    )
    out = remote.staging if remote else storage.local_path(cfg.output)
    t0 = time.perf_counter()
    found = discover(cfg.input)
    units = make_units(found.inputs, cfg.speech_unit)
    splits = {
        i.input_id: assign_split(
            i.split_id, fractions=cfg.split.fractions, pinned=cfg.split.pinned, salt=cfg.split.salt
        )
        for i in found.inputs
    }
    if remote:
        done = remote.pull()
        remote.clean_unfinished(done)
    else:
        done = finished_units(out)
        clean_unfinished(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    todo = [u.to_dict() for u in units if u.name not in done]
    print(
        f"ingest: {len(found.listed)} files, {len(units)} units ({len(done)} already done, "
        f"{len(todo)} to do) -> {cfg.output}"
    )
    sample_rate = codec_sample_rate(cfg.codec.name_or_path)
    run_rows: list[dict[str, Any]] = []
    if todo:
        writer = UnitWriter(out, cfg.shards.max_bytes, cfg.shards.max_samples, cfg.faces.face_fps)
        for row in _rows(todo, cfg, sample_rate, local):
            unit = writer.add(row)
            if unit:
                if remote:
                    remote.push_unit(unit)
                print(f"  done {unit}")
                _check_budget(writer, len(todo), cfg)
        run_rows = writer.rows_written
    summary = summarize(out, time.perf_counter() - t0, run_rows, file_rows(found, splits))
    if remote:
        remote.push_summary()
    reconcile(found, pq.read_table(out / "manifest.parquet").to_pylist())
    return summary


def main(cfg: IngestConfig) -> int:
    """Entrypoint of the ingest job: run, then print the summary table."""
    summary = run(cfg)
    print(format_summary(summary))
    print(f"manifest: {cfg.output.rstrip('/')}/manifest.parquet")
    return 0
