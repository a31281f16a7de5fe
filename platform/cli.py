"""The `dubforge` command.

Every job runs from a YAML under jobs/ with `key=value` overrides; a config that does not
validate exits with code 2 before any cluster resource is taken.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from dubforge.config import ConfigError, build, load_job, merge, parse_overrides, read_yaml, run

app = typer.Typer(
    help="dubforge: movie-dubbing data, training, tuning and serving on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="config overrides as key=value (nested: a.b=value)")
]


def _fail(err: ConfigError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


@app.command("run")
def run_cmd(
    job: Annotated[Path, typer.Argument(help="a job YAML, e.g. jobs/synth.yaml")],
    overrides: Overrides = None,
    dry_run: Annotated[
        bool, typer.Option(help="validate and print the config, run nothing")
    ] = False,
) -> None:
    """Run the job a YAML describes (its `job:` key picks which)."""
    try:
        cfg = load_job(job, overrides or [])
    except ConfigError as e:
        _fail(e)
    if dry_run:
        typer.echo(json.dumps(cfg.model_dump(), indent=2))
        return
    raise typer.Exit(_run(cfg))


def _run_kind(job: Path, overrides: list[str] | None, kind: str, command: str) -> None:
    """Load a job YAML that must be a `kind` job and run it (`dubforge <command>`)."""
    try:
        cfg = load_job(job, overrides or [])
    except ConfigError as e:
        _fail(e)
    if cfg.job != kind:
        _fail(ConfigError(f"{job} is a `{cfg.job}` job; `dubforge {command}` runs {kind} jobs"))
    raise typer.Exit(_run(cfg))


def _run(cfg: object) -> int:
    """Run a validated job; a ConfigError found while preparing it (e.g. shards that do not
    exist) exits with code 2 like a config that does not validate."""
    try:
        return run(cfg)  # type: ignore[arg-type]
    except ConfigError as e:
        _fail(e)
    return 2


@app.command()
def synth(
    output: Annotated[str | None, typer.Argument(help="output folder or URI")] = None,
    overrides: Overrides = None,
    movies: Annotated[int | None, typer.Option(help="number of movies")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    config: Annotated[Path, typer.Option(help="base job YAML")] = Path("jobs/synth.yaml"),
) -> None:
    """Make a synthetic movie corpus: espeak-ng speech with word timings, a talking face whose
    mouth follows the speech, mixed backgrounds, subtitles, labels and ground-truth stems."""
    from dubforge.synth.config import SynthConfig

    items = list(overrides or [])
    if output is not None and "=" in output:  # `dubforge synth movies=3`: no output given
        items.insert(0, output)
        output = None
    flags = {
        k: v for k, v in (("output", output), ("movies", movies), ("seed", seed)) if v is not None
    }
    try:
        base = read_yaml(config) if config.is_file() else {"job": "synth"}
        cfg = build(SynthConfig, merge(merge(base, flags), parse_overrides(items)), str(config))
    except ConfigError as e:
        _fail(e)
    raise typer.Exit(run(cfg))


@app.command()
def ingest(
    job: Annotated[Path, typer.Argument(help="an ingest job YAML, e.g. jobs/ingest.yaml")],
    overrides: Overrides = None,
) -> None:
    """Ingest movies and speech corpora into WebDataset shards + manifest (Ray Data)."""
    _run_kind(job, overrides, "ingest", "ingest")


@app.command()
def train(
    job: Annotated[Path, typer.Argument(help="a curriculum YAML, e.g. jobs/curriculum.yaml")],
    overrides: Overrides = None,
) -> None:
    """Train the dubber through a curriculum of stages (Ray Train + DeepSpeed, MLflow)."""
    _run_kind(job, overrides, "curriculum", "train")


@app.command("random-codec")
def random_codec(
    folder: Annotated[Path, typer.Argument(help="where to save the codec (save_pretrained)")],
    kind: Annotated[str, typer.Option(help="encodec (24 kHz, 75 Hz), dac or mimi")] = "encodec",
    seed: Annotated[int, typer.Option(help="weight seed")] = 0,
) -> None:
    """Save a full-size codec with RANDOM weights, for demos and speed runs only: its codes carry
    nothing, and every record made with it is flagged `codec.random_weights`."""
    from dubforge.ingest.tokenize import save_random_codec

    try:
        path = save_random_codec(folder, kind, seed)
    except ValueError as e:
        _fail(ConfigError(str(e)))
    typer.echo(f"random-weight {kind} codec -> {path} (not for real data)")


@app.command()
def evaluate(
    job: Annotated[Path, typer.Argument(help="an evaluate job YAML, e.g. jobs/evaluate.yaml")],
    overrides: Overrides = None,
) -> None:
    """Generate with an exported checkpoint for held-out (val/test) clips under the papers'
    protocol (setting 2: another clip of the speaker as the reference voice) and write metrics
    (JSON + Markdown) and sample wavs/spectrograms."""
    _run_kind(job, overrides, "evaluate", "evaluate")


@app.command("serve")
def serve_cmd(
    job: Annotated[Path, typer.Argument(help="a serve job YAML, e.g. jobs/serve.yaml")],
    overrides: Overrides = None,
    build_file: Annotated[
        Path | None,
        typer.Option(
            "--build", help="write the Serve config file (serve deploy, KubeRay) and exit"
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to deploy on (default: a local one)")
    ] = None,
) -> None:
    """Host an exported dubber on Ray Serve behind the authenticated HTTP API (/docs), until
    Ctrl-C; or, with --build, write its Serve config file."""
    from dubforge.serve.config import ServeConfig

    try:
        cfg = load_job(job, overrides or [])
    except ConfigError as e:
        _fail(e)
    if not isinstance(cfg, ServeConfig):
        _fail(ConfigError(f"{job} is a `{cfg.job}` job; `dubforge serve` runs serve jobs"))
    from dubforge.serve import run as serve_run

    if build_file is not None:
        out = serve_run.write_serve_config(cfg, build_file)
        typer.echo(f"wrote {out}: serve deploy {out}  (import path {serve_run.IMPORT_PATH})")
        return
    raise typer.Exit(serve_run.run(cfg, address))


client_app = typer.Typer(help="Call a running dubbing service.", no_args_is_help=True)
app.add_typer(client_app, name="client")


@client_app.command("dub")
def client_dub(
    url: Annotated[str, typer.Argument(help="the service, e.g. http://127.0.0.1:8000")],
    video: Annotated[Path, typer.Option(help="the clip to dub")],
    text: Annotated[str, typer.Option(help="the new line")],
    out: Annotated[Path, typer.Option(help="where the answer goes (.wav or .mp4)")],
    reference: Annotated[Path | None, typer.Option(help="reference voice audio")] = None,
    reference_text: Annotated[str | None, typer.Option(help="the reference's words")] = None,
    nfe: Annotated[int | None, typer.Option(help="velocity evaluations")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    guidance: Annotated[
        str | None, typer.Option(help='JSON {"video":2,"labels":2,"text":2} or none')
    ] = None,
) -> None:
    """Dub one clip through the service (token from DUBFORGE_API_TOKEN); mp4 when --out ends
    in .mp4."""
    from dubforge.serve.client import Client, ServiceError

    fmt = "mp4" if out.suffix.lower() == ".mp4" else "wav"
    scales: tuple[float, float, float] | str | None = None
    if guidance is not None:
        if guidance.strip() == "none":
            scales = "none"
        else:
            g = json.loads(guidance)
            scales = (g["video"], g["labels"], g["text"])
    try:
        answer = Client(url).dub(
            video, text, reference=reference, reference_text=reference_text, nfe=nfe,
            seed=seed, guidance=scales, format=fmt,
        )  # fmt: skip
    except ServiceError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(answer.content)
    flag = " (random weights)" if answer.headers.get("X-Dubforge-Random-Weights") == "true" else ""
    typer.echo(
        f"wrote {out}: {answer.headers.get('X-Dubforge-Seconds', '?')} s of audio in "
        f"{answer.seconds:.2f} s from {answer.headers.get('X-Dubforge-Model', '?')}{flag}"
    )


@app.command()
def params() -> None:
    """Parameter counts of the dubber presets (tiny, small, base), total and per component."""
    from dubforge.model.presets import param_table

    typer.echo(param_table())


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Report the environment: packages, tools, devices, and where jobs will run and log."""
    import platform as stdlib_platform

    import dubforge
    from dubforge.runtime import mlflow_tracking_uri

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    import torch

    def deepspeed_ops() -> dict[str, object]:
        """Per DeepSpeed op: prebuilt into the install, or JIT-buildable here (its compiler
        and headers found). The GPU path needs none (torch's fused AdamW); FusedAdam, if ever
        configured, would need `prebuilt` or nvcc for `jit`."""
        import contextlib

        if version("deepspeed") is None:
            return {}
        # DeepSpeed logs to stdout at import; keep --json output parseable
        with contextlib.redirect_stdout(sys.stderr):
            try:
                from deepspeed.accelerator import get_accelerator
                from deepspeed.git_version_info import installed_ops
                from deepspeed.ops.op_builder.all_ops import ALL_OPS
            except Exception as e:  # noqa: BLE001 - reported, not raised: doctor must finish
                return {"error": repr(e)}
            ops = {}
            for name in ("fused_adam", "cpu_adam", "deepspeed_shm_comm"):
                builder = ALL_OPS.get(name)
                jit = bool(builder is not None and builder.is_compatible(verbose=False))
                ops[name] = {"prebuilt": bool(installed_ops.get(name)), "jit": jit}
        return {"accelerator": get_accelerator().device_name(), "nvcc": shutil.which("nvcc"), **ops}

    report = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "dubforge": {"version": version("dubforge"), "path": list(dubforge.__path__)},
        "stdlib_platform": stdlib_platform.__file__,
        "machine": stdlib_platform.machine(),
        "packages": {
            p: version(p)
            for p in (
                "torch",
                "ray",
                "deepspeed",
                "mlflow",
                "transformers",
                "audio-separator",
                "webdataset",
                "pyarrow",
                "ffmpeg-python",
                "opencv-python-headless",
            )
        },
        "tools": {t: shutil.which(t) for t in ("ffmpeg", "ffprobe", "espeak-ng", "sox")},
        "cuda": torch.cuda.is_available(),
        "deepspeed_ops": deepspeed_ops(),
        "ray_address": os.environ.get("RAY_ADDRESS"),
        "mlflow_tracking_uri": mlflow_tracking_uri(),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        typer.echo(f"{key:>20}: {value}")


def main() -> None:
    app()
