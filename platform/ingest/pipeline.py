"""The ingest job: discover -> plan units -> Ray Data stages -> shards + manifest + summary.

    units (from_items) --flat_map(plan_unit)--> rows (one per input and per clip)
      --decode (tasks)--> --Separate (actors, only when needed)--> --energy (tasks)-->
      --Faces (actors)--> --Tokenize (actors)--> driver: UnitWriter (shards, manifest parts)

Stages stream: the driver writes a unit as soon as its last row arrives. Resume: units that have
a manifest part are skipped on a rerun; half-written shards of the others are removed first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dubforge import storage
from dubforge.ingest import stages
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.discover import discover
from dubforge.ingest.plan import make_units, plan_unit
from dubforge.ingest.writer import (
    RemoteOutput,
    UnitWriter,
    clean_unfinished,
    finished_units,
    parts_dir,
)
from dubforge.runtime import ray_session, workspace


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


def build_dataset(units: list[dict[str, Any]], cfg: IngestConfig, sample_rate: int):  # noqa: ANN201
    """The Ray Data plan (lazy); one place decides pools, batch sizes and GPUs."""
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    ds = ds.flat_map(lambda u: [{"row": stages.pack(r)} for r in plan_unit(u, cfg)])
    kw = {"cfg": cfg, "sample_rate": sample_rate}
    # decode holds no model: as a task it fuses with the stages after it (bench/ingest_speed.py:
    # object-store peak 1.6 GB -> 0.13 GB and 1.5x the throughput of a decode actor pool)
    ds = ds.map_batches(functools.partial(stages.decode, **kw), batch_size=4)
    if cfg.separator.model_dir:
        ds = ds.map_batches(
            stages.Separate, fn_constructor_kwargs=kw,
            batch_size=1, num_gpus=cfg.separator.num_gpus,
            compute=ActorPoolStrategy(size=cfg.separator.actors),
        )  # fmt: skip
    else:
        ds = ds.map_batches(stages.require_stems, batch_size=8)
    ds = ds.map_batches(functools.partial(stages.energy, cfg=cfg), batch_size=8)
    if cfg.faces.enabled:
        ds = ds.map_batches(stages.Faces, fn_constructor_kwargs=kw, batch_size=1,
                            compute=ActorPoolStrategy(size=cfg.faces.actors))  # fmt: skip
    return ds.map_batches(
        stages.Tokenize, fn_constructor_kwargs={"cfg": cfg}, batch_size=4,
        num_gpus=cfg.codec.num_gpus, compute=ActorPoolStrategy(size=cfg.codec.actors),
    )  # fmt: skip


def summarize(out: Path, wall: float, run_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the manifest parts into manifest.parquet and the summary (all units in `out`;
    `this_run` covers the units this invocation processed)."""
    parts = sorted(parts_dir(out).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})
    pq.write_table(table, out / "manifest.parquet")
    rows = table.to_pylist()
    inputs = [r for r in rows if r["clip_no"] == -1]
    clips = [r for r in rows if r["clip_no"] != -1]
    accepted = [r for r in clips if r["status"] == "accepted"]
    run_seconds = sum(r["end"] for r in run_rows if r["clip_no"] == -1)
    summary = {
        "inputs": len(inputs),
        "inputs_accepted": sum(r["status"] == "accepted" for r in inputs),
        "inputs_rejected": dict(Counter(r["reason"] for r in inputs if r["status"] == "rejected")),
        "clips_accepted": len(accepted),
        "clips_rejected": dict(Counter(r["reason"] for r in clips if r["status"] == "rejected")),
        "hours_in": round(sum(r["end"] for r in inputs if r["status"] == "accepted") / 3600, 4),
        "hours_out": round(sum(r["end"] - r["start"] for r in accepted) / 3600, 4),
        "shards": len(list((out / "shards").glob("*.tar"))),
        "this_run": {
            "inputs": sum(r["clip_no"] == -1 for r in run_rows),
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


def _check_cluster(cfg: IngestConfig) -> None:
    """Actor pools that cannot all be placed make Ray Data wait forever: refuse up front."""
    import ray

    have = ray.cluster_resources().get("CPU", 0)
    if have < cfg.min_cpus():
        raise RuntimeError(
            f"the Ray cluster has {have:g} CPUs; this ingest config needs {cfg.min_cpus()} "
            "(one per codec/faces/separator actor + 2): add nodes or lower the *.actors counts"
        )


def _staging(uri: str) -> Path:
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return workspace() / "staging" / f"ingest-{digest}"


def run(cfg: IngestConfig) -> dict[str, Any]:
    """Ingest everything under cfg.input into cfg.output (a folder or a URI); returns the
    summary. Units already in the output are skipped."""
    remote = (
        None if storage.is_local(cfg.output) else RemoteOutput(cfg.output, _staging(cfg.output))
    )
    out = remote.staging if remote else storage.local_path(cfg.output)
    t0 = time.perf_counter()
    units = make_units(discover(cfg.input), cfg.speech_unit)
    if remote:
        done = remote.pull()
        remote.clean_unfinished(done)
    else:
        done = finished_units(out)
        clean_unfinished(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    todo = [u.to_dict() for u in units if u.name not in done]
    print(
        f"ingest: {len(units)} units ({len(done)} already done, {len(todo)} to do) -> {cfg.output}"
    )
    sample_rate = codec_sample_rate(cfg.codec.name_or_path)
    run_rows: list[dict[str, Any]] = []
    if todo:
        writer = UnitWriter(out, cfg.shards.max_bytes, cfg.shards.max_samples, cfg.faces.face_fps)
        cpus = cfg.num_cpus or max(cfg.min_cpus(), os.cpu_count() or 1)
        with ray_session(num_cpus=cpus):
            _check_cluster(cfg)
            for item in build_dataset(todo, cfg, sample_rate).iter_rows():
                unit = writer.add(stages.unpack(item["row"]))
                if unit:
                    if remote:
                        remote.push_unit(unit)
                    print(f"  done {unit}")
        run_rows = writer.rows_written
    summary = summarize(out, time.perf_counter() - t0, run_rows)
    if remote:
        remote.push_summary()
    return summary


def main(cfg: IngestConfig) -> int:
    """Entrypoint of the ingest job: run, then print the summary table."""
    summary = run(cfg)
    print(format_summary(summary))
    print(f"manifest: {cfg.output.rstrip('/')}/manifest.parquet")
    return 0
