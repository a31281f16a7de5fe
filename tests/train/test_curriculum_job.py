"""The debug curriculum as users run it (`ray job submit --working-dir . --
jobs/curriculum_debug.yaml`) against a real two-node Ray cluster (head + a second `ray start
--address` node on this machine), real DeepSpeed ZeRO-2 over gloo, real MLflow (sqlite). Then a
worker is killed mid-stage and the stage must recover from its checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dubforge.ingest.shards import read_shard
from dubforge.model.batch import collate
from dubforge.model.checkpoint import load_checkpoint, load_state
from dubforge.model.presets import dit_tiny
from dubforge.model.spaces import MelSpace
from dubforge.train.engine import state_digest
from tests.conftest import VENV_BIN, _free_ports
from tests.train.conftest import DEBUG_JOB

pytestmark = pytest.mark.slow
STAGES = ["tts", "v2a", "v2a_tts", "v2st"]
RAY = str(VENV_BIN / "ray")


def _raylet_pids(node_manager_port: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "raylet" in cmd and f"--node_manager_port={node_manager_port}" in cmd:
                out.append(int(proc.name))
    return out


def _alive_nodes(cluster) -> list[dict]:
    out = cluster.run([RAY, "list", "nodes", "--format", "json", "--filter", "state=ALIVE"])
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def two_nodes(ray_cluster):
    """The session's head node plus a second node joined with `ray start --address`; the second
    node is stopped (its raylet terminated) after the module."""
    nm, om, metrics, rte, agent, grpc = _free_ports(6)
    base = max(21000, 30000 + (nm % 200) * 100)
    args = [
        RAY, "start", f"--address={ray_cluster.address}", "--node-ip-address=127.0.0.1",
        "--num-cpus=2", f"--node-manager-port={nm}", f"--object-manager-port={om}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rte}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
        f"--min-worker-port={base}", f"--max-worker-port={base + 99}", "--disable-usage-stats",
    ]  # fmt: skip
    started = subprocess.run(args, env=ray_cluster.env, capture_output=True, text=True,
                             timeout=180)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    deadline = time.monotonic() + 60
    while len(_alive_nodes(ray_cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(_alive_nodes(ray_cluster)) == 2
    yield ray_cluster
    for pid in _raylet_pids(nm):
        os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def job(two_nodes, train_shards, tmp_path_factory, repo):
    """The debug curriculum submitted as a Ray job; waits for it to end."""
    root = tmp_path_factory.mktemp("curriculum")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "DUBFORGE_WORKSPACE": str(root / "ws")}  # fmt: skip
    t0 = time.monotonic()
    result = two_nodes.run(
        [RAY, "job", "submit", "--working-dir", ".", "--runtime-env-json",
         json.dumps({"env_vars": env}), "--", "jobs/curriculum_debug.yaml",
         f"shards={train_shards}", f"storage={root / 'storage'}"],
        cwd=repo, timeout=900,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    summary = json.loads((root / "storage" / "debug" / "summary.json").read_text())
    return {"root": root, "log": log, "summary": summary, "seconds": time.monotonic() - t0,
            "tracking": env["MLFLOW_TRACKING_URI"]}  # fmt: skip


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_job_succeeds_on_both_nodes(job, two_nodes):
    assert "succeeded" in job["log"].lower()
    stages = job["summary"]["stages"]
    assert [s["stage"] for s in stages] == STAGES
    node_ids = {n["node_id"] for n in _alive_nodes(two_nodes)}
    for s in stages:
        assert len(s["nodes"]) == 2 and set(s["nodes"]) == node_ids, s
    steps = {s["name"]: s["steps"] for s in yaml.safe_load(DEBUG_JOB.read_text())["stages"]}
    assert {s["stage"]: s["steps"] for s in stages} == steps
    print(f"debug curriculum as a Ray job: {job['seconds']:.0f} s")


def test_checkpoints_and_exports_per_stage(job):
    storage = job["root"] / "storage" / "debug"
    for stage in STAGES:
        runs = list((storage / "ray").glob(f"{stage}-r1/step-*"))
        assert runs, f"no checkpoints for {stage}"
        last = max(runs)
        assert (last / "ds" / "mp_rank_00_model_states.pt").is_file()
        shards = sorted(p.name for p in (last / "ds").glob("*optim_states.pt"))
        assert len(shards) == 2, shards  # one ZeRO optimizer shard per rank, merged by Ray
        state = json.loads((last / "state.json").read_text())
        assert state["final"] and state["stage"] == stage
        ckpt = load_checkpoint(storage / "exports" / stage)
        assert ckpt.metadata["stage"] == stage and ckpt.metadata["step"] == state["step"]


def test_stage_starts_from_previous_export_and_frozen_modules_stay(job):
    storage = job["root"] / "storage" / "debug"
    stages = {s["stage"]: s for s in job["summary"]["stages"]}
    assert stages["tts"]["init"] is None
    for prev, stage in zip(STAGES, STAGES[1:], strict=False):
        assert stages[stage]["init"].endswith(f"exports/{prev}")
        # the weights the stage's first step used are exactly the previous export's
        assert stages[stage]["init_digest"] == state_digest(load_state(storage / "exports" / prev))
    tts, v2a = load_state(storage / "exports" / "tts"), load_state(storage / "exports" / "v2a")
    frozen = [k for k in tts if k.startswith("text_encoder.")]
    assert frozen and all(torch.equal(tts[k], v2a[k]) for k in frozen)
    moved = [k for k in tts if k.startswith("dit.") and not torch.equal(tts[k], v2a[k])]
    assert moved  # the rest of the model did train in v2a


def test_mlflow_parent_nested_runs_metrics_and_registry(job):
    client = _client(job["tracking"])
    exp = client.get_experiment_by_name("dubforge-debug")
    parent = client.get_run(job["summary"]["mlflow_parent"])
    assert parent.info.status == "FINISHED" and parent.data.params["stages.0.name"] == "tts"
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == sorted(STAGES)
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("train/loss", "train/cfm", "train/lr", "train/grad_norm",
                    "train/samples_per_s", "train/frames_per_s", "train/data_wait_frac",
                    "val/loss"):  # fmt: skip
            assert key in run.data.metrics, (run.info.run_name, key)
        arts = [a.path for a in client.list_artifacts(run.info.run_id, "validation")]
        assert arts, run.info.run_name
        files = client.list_artifacts(run.info.run_id, arts[-1])
        assert {Path(f.path).suffix for f in files} == {".wav", ".png"}
        # validation draws only held-out records (corpus.py names val movies/speakers v*)
        val_keys = run.data.params["data.validation_keys"].split(",")
        assert val_keys and all(k.startswith(("vmovie", "vspeec")) for k in val_keys), val_keys
        assert run.data.metrics["data/lost_samples"] == 0
    reg = job["summary"]["registered"]
    version = client.get_model_version(reg["name"], str(reg["version"]))
    last = next(r for r in children if r.info.run_name == "v2st")
    assert version.run_id == last.info.run_id


def test_loss_decreases_over_the_curriculum(job, train_shards):
    """Per stage, the validation loss (fixed draws) at the end is below its start; and the TTS
    export's loss on speech clips, measured here with our own draws, is well below a random
    init's."""
    client = _client(job["tracking"])
    for s in job["summary"]["stages"]:
        history = client.get_metric_history(s["mlflow_run"], "val/loss")
        hist = sorted((m.step, m.value) for m in history)
        assert hist[0][0] == 0 and hist[-1][1] < hist[0][1], (s["stage"], hist)
    records = [(x.meta, x.arrays) for p in sorted((train_shards / "train" / "speech").glob("*.tar"))
               for x in read_shard(p)]  # fmt: skip
    space = MelSpace()
    export = load_checkpoint(job["root"] / "storage" / "debug" / "exports" / "tts").model
    torch.manual_seed(0)
    init = dit_tiny().eval()

    def loss(model: torch.nn.Module) -> float:
        vals = []
        with torch.no_grad():
            for d in range(4):
                batch = collate(records, space, tasks="tts", seed=d)
                vals.append(float(model.loss(batch, torch.Generator().manual_seed(d))["loss"]))
        return float(np.mean(vals))

    before, after = loss(init), loss(export)
    print(f"tts loss on the speech clips: random init {before:.2f} -> tts export {after:.2f}")
    assert after < 0.8 * before


def test_worker_killed_mid_stage_recovers_from_checkpoint(two_nodes, train_shards, repo, tmp_path):
    data = yaml.safe_load(DEBUG_JOB.read_text())
    data.update(name="ft", shards=str(train_shards), storage=str(tmp_path / "storage"))
    data["stages"] = [dict(data["stages"][0], steps=60)]
    data["checkpoint"] = {"every": 5, "keep": 2, "max_failures": 2}
    data["tracking"].update(log_every=1, register_as=None, experiment="dubforge-ft")
    job_yaml = tmp_path / "ft.yaml"
    job_yaml.write_text(yaml.safe_dump(data))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": tracking, "DUBFORGE_WORKSPACE": str(tmp_path / "ws")}
    sub = two_nodes.run(
        [RAY, "job", "submit", "--no-wait", "--working-dir", ".", "--runtime-env-json",
         json.dumps({"env_vars": env}), "--", "dubforge", "run", str(job_yaml)],
        cwd=repo, timeout=120,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", sub.stdout + sub.stderr).group(0)
    run_dir = tmp_path / "storage" / "ft" / "ray" / "tts-r1"
    snapshot = run_dir / "checkpoint_manager_snapshot.json"

    def registered() -> list[int]:
        """Checkpoints Ray Train has committed (a step-* folder may still be uploading)."""
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):
            return []
        return [int(r["metrics"]["step"]) for r in results]

    deadline = time.monotonic() + 300
    while not registered() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert registered(), "no checkpoint was committed"
    actors = two_nodes.run([RAY, "list", "actors", "--format", "json", "--filter",
                            "class_name=RayTrainWorker", "--filter", "state=ALIVE"])  # fmt: skip
    workers = json.loads(actors.stdout)
    assert len(workers) == 2, actors.stdout[-2000:]
    killed_at = max(registered())
    os.kill(int(workers[1]["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        out = two_nodes.run([RAY, "job", "status", job_id])
        status = (out.stdout + out.stderr).lower()  # "Job '...' succeeded"
        if any(f"{word}\x1b" in status or f"{word}\n" in status
               for word in ("succeeded", "failed", "stopped")):  # fmt: skip
            break
        time.sleep(2)
    logs = two_nodes.run([RAY, "job", "logs", job_id]).stdout
    assert "succeeded" in status, logs[-6000:]
    summary = json.loads((tmp_path / "storage" / "ft" / "summary.json").read_text())
    stage = summary["stages"][0]
    assert stage["steps"] == 60
    assert stage["resumed_from"] is not None and stage["resumed_from"] >= killed_at
    # the logged step never goes back past a checkpoint: after the restart it continues from the
    # checkpoint the group resumed from
    client = _client(tracking)
    hist = sorted(client.get_metric_history(stage["mlflow_run"], "train/loss"),
                  key=lambda m: m.timestamp)  # fmt: skip
    steps = [m.step for m in hist]
    drops = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if b <= a]
    for _, b in drops:  # the first step after the restart follows the resumed checkpoint
        assert b == stage["resumed_from"] + 1, (steps, drops)
    assert steps[-1] == 60 and max(steps) == 60
    print(
        f"killed a worker after checkpoint {killed_at}; resumed from {stage['resumed_from']}; "
        f"steps logged {steps[:3]}...{steps[-3:]}, {len(drops)} re-logged step(s)"
    )
