"""The code lives in platform/ but must never shadow the standard library's `platform`.

Each test runs in a context where the repo root is on sys.path (the hazard) and checks that
`import platform` is the standard library's while `import dubforge` is our package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


# One line, so it also works as `python -c` in a job entrypoint; `python -c` puts the current
# directory on sys.path, which is the hazard whenever that directory holds platform/.
PROBE = (
    "import json, os, platform, dubforge.config; print(json.dumps({"
    "'stdlib_platform': platform.__file__, 'system': platform.system(), "
    "'dubforge_file': dubforge.config.__file__, 'cwd_has_platform': os.path.isdir('platform')}))"
)


def _check_report(report: dict) -> None:
    assert report["cwd_has_platform"], "the probe should run where platform/ is in the cwd"
    assert Path(report["stdlib_platform"]).resolve() == STDLIB / "platform.py"
    assert report["system"] == "Linux"  # a function only the real module has
    assert Path(report["dubforge_file"]).parent.name == "platform"


def _report(stdout: str) -> dict:
    line = next(ln for ln in stdout.splitlines() if ln.startswith('{"stdlib_platform"'))
    return json.loads(line)


def test_repo_has_no_platform_init(repo):
    assert not (repo / "platform" / "__init__.py").exists()


def test_in_this_pytest_process(repo):
    import platform

    import dubforge.config

    assert Path(platform.__file__).resolve() == STDLIB / "platform.py"
    assert platform.python_implementation() == "CPython"
    assert Path(dubforge.config.__file__).resolve() == repo / "platform" / "config.py"


def test_python_m_from_repo_root(repo):
    # `python -m` puts the current directory (the repo root, holding platform/) first on sys.path
    out = subprocess.run(
        [sys.executable, "-m", "dubforge", "doctor", "--json"],
        cwd=repo, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert Path(report["stdlib_platform"]).resolve() == STDLIB / "platform.py"
    assert any(Path(p).resolve() == repo / "platform" for p in report["dubforge"]["path"])
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    _check_report(_report(probe.stdout))


@pytest.mark.parametrize("mode", ["prepend", "append", "importlib"])
def test_pytest_import_modes(repo, tmp_path, mode):
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(
        "import platform, sysconfig, pathlib, dubforge.config\n"
        "def test_probe():\n"
        "    std = pathlib.Path(sysconfig.get_paths()['stdlib']).resolve()\n"
        "    assert pathlib.Path(platform.__file__).resolve() == std / 'platform.py'\n"
        "    assert platform.system() == 'Linux'\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--import-mode={mode}",
         f"--rootdir={repo}", str(test_file)],
        cwd=repo, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


@pytest.mark.slow
def test_ray_task_with_repo_working_dir(repo, ray_cluster):
    """A task on a cluster worker whose working dir (and sys.path) is a copy of the repo."""
    script = textwrap.dedent(
        f"""
        import ray
        env = {{"working_dir": {str(repo)!r}, "excludes": [".venv", "runs", ".git"]}}
        ray.init(address={ray_cluster.address!r}, include_dashboard=False, runtime_env=env)

        @ray.remote
        def probe():
            import json, os, platform, sys, dubforge.config
            assert os.getcwd() in sys.path or "" in sys.path, sys.path
            return json.dumps({{"stdlib_platform": platform.__file__, "system": platform.system(),
                               "dubforge_file": dubforge.config.__file__,
                               "cwd_has_platform": os.path.isdir("platform")}})

        print(ray.get(probe.remote()))
        ray.shutdown()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd="/", env=ray_cluster.env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _check_report(_report(out.stdout))


@pytest.mark.slow
def test_ray_job_submit_working_dir(repo, ray_cluster):
    """`ray job submit --working-dir .` against a token-auth cluster started with `ray start`."""
    out = ray_cluster.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", ".", "--",
         "python", "-c", PROBE],
        cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _check_report(_report(out.stdout))


@pytest.mark.slow
def test_runnable_job_yaml_as_ray_job(repo, ray_cluster, tmp_path):
    """A job YAML is itself the entrypoint (shebang `dubforge run`), overrides included."""
    out_dir = tmp_path / "corpus"
    out = ray_cluster.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", ".", "--",
         "jobs/synth_debug.yaml", f"output={out_dir}", "movies=1", "speech_utterances=2"],
        cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "corpus: 1 movies" in out.stdout
    assert (out_dir / "movies" / "movie_000.mp4").stat().st_size > 10_000
    assert len(list((out_dir / "speech").glob("*/*.wav"))) == 2
