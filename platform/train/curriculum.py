"""The curriculum driver (`job: curriculum`): one Ray Train `TorchTrainer` per stage, in order,
each starting from the previous stage's export, all tracked in one MLflow parent run.

    dubforge train jobs/curriculum.yaml shards=/data/shards storage=s3://bucket/train
    ray job submit --working-dir . -- jobs/curriculum.yaml shards=/nfs/shards storage=/nfs/train

Storage layout (`storage`, default `<workspace>/train`; a folder all nodes share, or a URI):

    <storage>/<name>/ray/<stage>-rN/          Ray Train run: checkpoints step-XXXXXXXX/ with
                                              ds/ (DeepSpeed shards), state.json, export/ (last)
    <storage>/<name>/exports/<stage>/         the stage's consolidated inference export
    <storage>/<name>/summary.json             per stage: steps, metrics, nodes, digests, runs

Re-running the job skips stages whose export exists and resumes an unfinished stage from its
latest checkpoint; `run_stages=[name]` re-runs the named stages from scratch (a new `-rN` run)
starting from the previous stage's export.

Before Ray starts, everything that can be checked is: the config (pydantic, errors name the
field), every stage's shards (globs match, shards whole), and the export each first stage
starts from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

from dubforge import storage
from dubforge.config import ConfigError
from dubforge.runtime import mlflow_tracking_uri, ray_session, workspace
from dubforge.train.config import CurriculumConfig, Stage
from dubforge.train.data import StagePlan, build_dataset, expand, plan_stage, stage_sources
from dubforge.train.loop import EXPORT, STATE, train_loop

log = logging.getLogger(__name__)


def storage_root(cfg: CurriculumConfig) -> str:
    base = cfg.storage or str(workspace() / "train")
    if not storage.is_uri(base):
        base = str(Path(base).expanduser().resolve())
    return base.rstrip("/") + "/" + cfg.name


def _export_path(root: str, stage: str) -> str:
    return f"{root}/exports/{stage}"


def _has_export(root: str) -> bool:
    return storage.exists(root + "/config.json")


def _attempts(root: str, stage: str) -> list[int]:
    filesystem, path = storage.resolve(root + "/ray")
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    out = []
    for info in filesystem.get_file_info(pafs.FileSelector(path)):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(stage + "-r"):
            suffix = name[len(stage) + 2 :]
            if suffix.isdigit():
                out.append(int(suffix))
    return sorted(out)


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list | tuple) and any(isinstance(v, dict | list) for v in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = json.dumps(d) if not isinstance(d, str) else d
    return out


def _validation_records(cfg: CurriculumConfig, stage: Stage, n: int, cache: Path) -> list[Any]:
    """Up to `n` records of the `val` split that the stage's tasks can use, from the shards its
    sources' globs select under `<shards>/val/` (never trained on: val/loss then measures
    generalisation). None (validation off, with a warning) when the split has none."""
    from dubforge.ingest.shards import ShardError, read_shard
    from dubforge.model.batch import as_record
    from dubforge.schema import tasks_for_arrays

    space = cfg.model.space.name
    out: list[Any] = []
    for _, pattern, _ in stage_sources(cfg, stage, split="val"):
        for uri in expand(pattern):
            try:
                for sample in read_shard(storage.localize(uri, cache)):
                    record = as_record(sample.meta)
                    if record.split != "val":
                        continue
                    if set(tasks_for_arrays(sample.arrays, space)) & set(stage.tasks):
                        out.append((record, sample.arrays))
                    if len(out) >= n:
                        return out
            except (ShardError, ValueError) as e:
                log.warning("validation: skipping %s: %s", uri, e)
    if not out:
        log.warning("stage %s: no val records under %s; validation is off", stage.name, cfg.shards)
    return out


class Tracking:
    """The driver's MLflow side: experiment, parent run, nested stage runs, registry."""

    def __init__(self, cfg: CurriculumConfig) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):  # keep artifacts beside the store, not in cwd
                location = Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                location = location.as_uri()
            self.experiment = self.client.create_experiment(
                cfg.tracking.experiment, artifact_location=location
            )
        else:
            self.experiment = exp.experiment_id
        self.parent = self.client.create_run(
            self.experiment, run_name=cfg.name, tags={"dubforge.job": "curriculum"}
        ).info.run_id
        self.log_params(self.parent, _flatten(cfg.model_dump(mode="json")))

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def stage_run(self, stage: Stage) -> str:
        run = self.client.create_run(
            self.experiment, run_name=stage.name,
            tags={"mlflow.parentRunId": self.parent, "dubforge.stage": stage.name},
        )  # fmt: skip
        self.log_params(run.info.run_id, _flatten(stage.model_dump(mode="json")))
        return run.info.run_id

    def register(self, run_id: str, export: Path, name: str) -> int:
        """Log the export as the run's `export` artifacts and register them as a version."""
        from mlflow.exceptions import MlflowException

        self.client.log_artifacts(run_id, str(export), artifact_path="export")
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        uri = self.client.get_run(run_id).info.artifact_uri
        version = self.client.create_model_version(name, source=f"{uri}/export", run_id=run_id)
        return int(version.version)

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextmanager
def _local_copy(uri: str) -> Iterator[Path]:
    """A local folder with the contents of `uri` (the folder itself when local)."""
    if storage.is_local(uri):
        yield storage.local_path(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix="dubforge-export-"))
    try:
        filesystem, path = storage.resolve(uri)
        pafs.copy_files(path, str(tmp), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(cfg: CurriculumConfig) -> dict[str, StagePlan]:
    """Everything checkable before Ray starts: each selected stage's shards and the export the
    first selected stage starts from. Raises ConfigError naming the field."""
    root = storage_root(cfg)
    plans = {s.name: plan_stage(cfg, s) for s in cfg.selected()}
    first = cfg.selected()[0]
    prev = cfg.previous(first)
    if first.init is not None:
        if not _has_export(first.init):
            i = [s.name for s in cfg.stages].index(first.name)
            raise ConfigError(f"stages.{i}.init: {first.init} is not a dubforge export")
    elif prev is not None and not _has_export(_export_path(root, prev.name)):
        if cfg.run_stages:
            raise ConfigError(
                f"run_stages: stage {first.name!r} starts from stage {prev.name!r}'s export, "
                f"which is not in {_export_path(root, prev.name)}; run {prev.name!r} first"
            )
    return plans


def run_stage(
    cfg: CurriculumConfig, stage: Stage, plan: StagePlan, tracking: Tracking, root: str,
    init: str | None, attempt: int,
) -> dict[str, Any]:  # fmt: skip
    """Train one stage with Ray Train + DeepSpeed; returns its summary entry."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dubforge.model.presets import space_from_config

    space = space_from_config(cfg.model.space)
    stem_keys = {"speech": space.array_key("speech"), "background": space.array_key("background")}
    dataset = build_dataset(plan, stem_keys, space.frame_rate, cfg.data.max_bad_shards, cfg.seed,
                            tasks=list(stage.tasks))  # fmt: skip
    cache = Path(tempfile.mkdtemp(prefix="dubforge-val-"))
    try:
        validation = _validation_records(cfg, stage, cfg.tracking.validation_clips, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    run_id = tracking.stage_run(stage)
    extra = {
        "data.shards": str(plan.shards), "data.bad_shards": str(len(plan.bad)),
        "data.epoch_samples": f"{plan.epoch_samples:.0f}", "init_from": init or "random",
        "attempt": str(attempt),
    }  # fmt: skip
    tracking.log_params(run_id, extra)
    tracking.client.log_metric(run_id, "data/bad_shards", len(plan.bad))
    tracking.client.log_metric(run_id, "data/lost_samples", plan.lost_samples)
    if plan.lossy:
        lossy = {c.uri: c.lost for c in plan.lossy}
        tracking.log_params(run_id, {"data.lossy_shards": json.dumps(lossy)[:6000]})
    tracking.log_params(run_id, {"data.validation_keys": ",".join(r.key for r, _ in validation)})
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"), "stage": stage.name, "init": init,
            "run_id": run_id, "tracking_uri": tracking.uri,
            "validation": pickle.dumps(validation, protocol=5),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources, placement_strategy=cfg.scaling.placement,
        ),
        run_config=RunConfig(
            name=f"{stage.name}-r{attempt}", storage_path=root + "/ray",
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
        ),
        datasets={"train": dataset},
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception:
        tracking.finish(run_id, ok=False)
        raise
    seconds = time.perf_counter() - t0
    if result.checkpoint is None:
        tracking.finish(run_id, ok=False)
        raise RuntimeError(f"stage {stage.name!r} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE).read_text())
        if not (Path(d) / EXPORT).is_dir():
            tracking.finish(run_id, ok=False)
            raise RuntimeError(f"stage {stage.name!r}: the last checkpoint has no export")
        dest = _export_path(root, stage.name)
        if storage.is_local(dest):
            shutil.rmtree(storage.local_path(dest), ignore_errors=True)
            shutil.copytree(Path(d) / EXPORT, storage.local_path(dest))
        else:
            storage.upload(Path(d) / EXPORT, dest)
    tracking.finish(run_id, ok=True)
    return {
        "stage": stage.name, "steps": state["step"], "seconds": round(seconds, 1),
        "metrics": state.get("metrics", {}), "nodes": state.get("nodes", []),
        "init": init, "init_digest": state.get("init_digest", ""),
        "frozen_digest": state.get("frozen_digest", ""), "resumed_from": state.get("resumed_from"),
        "export": dest, "mlflow_run": run_id, "ray_run": f"{root}/ray/{stage.name}-r{attempt}",
        "shards": plan.shards, "bad_shards": [c.uri for c in plan.bad],
    }  # fmt: skip


def main(cfg: CurriculumConfig) -> int:
    plans = check(cfg)
    root = storage_root(cfg)
    tracking = Tracking(cfg)
    print(f"curriculum {cfg.name}: stages {[s.name for s in cfg.selected()]} -> {root} "
          f"(MLflow {tracking.uri}, parent run {tracking.parent})")  # fmt: skip
    summary: dict[str, Any] = {"name": cfg.name, "mlflow_parent": tracking.parent, "stages": []}
    explicit = set(cfg.run_stages or ())
    last: dict[str, Any] | None = None
    ok = False
    try:
        with ray_session():
            for stage in cfg.selected():
                export = _export_path(root, stage.name)
                if stage.name not in explicit and _has_export(export):
                    print(f"stage {stage.name}: export exists at {export}; skipped")
                    continue
                prev = cfg.previous(stage)
                init = stage.init or (_export_path(root, prev.name) if prev else None)
                if init is not None and not _has_export(init):
                    raise ConfigError(f"stage {stage.name!r} starts from {init}: no export there")
                tries = _attempts(root, stage.name)
                fresh = stage.name in explicit or not tries
                attempt = (tries[-1] + 1 if tries else 1) if fresh else tries[-1]
                with _local_copy(init) if init else contextlib.nullcontext() as init_local:
                    entry = run_stage(cfg, stage, plans[stage.name], tracking, root,
                                      str(init_local) if init_local else None, attempt)  # fmt: skip
                entry["init"] = init
                summary["stages"].append(entry)
                last = entry
                print(_line(entry))
        if last is not None and cfg.tracking.register_as:
            with _local_copy(last["export"]) as export:
                version = tracking.register(last["mlflow_run"], export, cfg.tracking.register_as)
            summary["registered"] = {"name": cfg.tracking.register_as, "version": version}
            print(f"registered {cfg.tracking.register_as} version {version}")
        ok = True
    finally:
        tracking.finish(tracking.parent, ok)
        _write_summary(root, summary)
    return 0


def _line(entry: dict[str, Any]) -> str:
    m = entry["metrics"]
    return (
        f"stage {entry['stage']}: {entry['steps']} steps in {entry['seconds']} s, "
        f"loss {m.get('train/loss', float('nan')):.4f}, val {m.get('val/loss', float('nan')):.4f}, "
        f"{m.get('train/samples_per_s', float('nan')):.1f} samples/s, "
        f"data wait {m.get('train/data_wait_frac', float('nan')):.1%}, "
        f"nodes {len(entry['nodes'])} -> {entry['export']}"
    )


def _write_summary(root: str, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2, default=str)
    if storage.is_local(root):
        path = storage.local_path(root)
        path.mkdir(parents=True, exist_ok=True)
        (path / "summary.json").write_text(text)
    else:
        filesystem, path = storage.resolve(root + "/summary.json")
        with filesystem.open_output_stream(path) as f:
            f.write(text.encode())
