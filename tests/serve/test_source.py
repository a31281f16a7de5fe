"""`resolve`: the model sources a Serve replica loads (export folder, file:// URI, MLflow
registry version or alias, seeded random weights) and the errors for bad ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dubforge.model.checkpoint import save_checkpoint
from dubforge.model.config import ModelConfig
from dubforge.model.presets import build_model
from dubforge.model.spaces import MelSpace
from dubforge.serve.generate import Generator
from dubforge.serve.source import SourceError, resolve
from dubforge.train.curriculum import Tracking


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    cfg, space = ModelConfig(), MelSpace(griffin_lim_iters=2)
    model = build_model(cfg, space)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("exports") / "v2s"
    return save_checkpoint(folder, model, cfg, space, stage="v2s", step=7)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def original(export):
    return resolve(str(export), Path("unused"))


def test_export_folder_loads_in_place(export, original, tmp_path):
    r = original
    assert r.folder == export and r.name == "v2s" and r.version is None and r.run_id is None
    assert not r.random_weights and r.checkpoint.metadata["step"] == 7
    assert r.space.sample_rate == 24000 and isinstance(r.space, MelSpace)
    assert not (tmp_path / "cache").exists()  # nothing copied for a local folder


def test_file_uri_is_copied_into_the_cache(export, original, tmp_path):
    cache = tmp_path / "cache"
    r = resolve(export.as_uri(), cache)
    assert r.folder is not None and r.folder.is_relative_to(cache) and r.folder != export
    assert sorted(p.name for p in r.folder.iterdir()) == sorted(p.name for p in export.iterdir())
    assert _same_weights(r.checkpoint.model, original.checkpoint.model)
    again = resolve(export.as_uri(), cache)  # a second replica replaces the copy, no leftovers
    assert again.folder == r.folder and [p.name for p in cache.rglob(".copy-*")] == []


def test_random_weights_are_seeded_and_flagged(tmp_path):
    a, b = resolve("random:tiny", tmp_path), resolve("random:tiny", tmp_path)
    assert a.random_weights and a.folder is None and a.name == "random-tiny"
    assert _same_weights(a.checkpoint.model, b.checkpoint.model)
    assert a.checkpoint.config.tasks == ("tts", "v2s")
    assert a.space.reference()["mel_profile"] == "hifigan_22k"
    gen = Generator(a.checkpoint, a.space)
    assert gen.info["random_weights"] is True and gen.info["vocoder"]["kind"] in (
        "hifigan",
        "griffin_lim",
    )
    # no tensor is left at a zero init (AdaLN-zero would make the output ignore the inputs)
    assert all(float(v.abs().max()) > 0 for v in a.checkpoint.model.state_dict().values())


@pytest.fixture
def registry(tmp_path, monkeypatch, export):
    """A sqlite MLflow store under tmp_path holding `export` as version 1 of `dubber`,
    registered by the curriculum's own code, with the alias `champion`."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    location = (tmp_path / "artifacts").as_uri()
    experiment = client.create_experiment("serve-test", artifact_location=location)
    run_id = client.create_run(experiment, run_name="v2s").info.run_id
    version = Tracking.register(SimpleNamespace(client=client), run_id, export, "dubber")
    client.set_registered_model_alias("dubber", "champion", str(version))
    return SimpleNamespace(client=client, run_id=run_id, version=version)


def test_registry_version_and_alias(registry, original, tmp_path):
    cache = tmp_path / "cache"
    r = resolve("models:/dubber/1", cache)
    assert (r.name, r.version, r.run_id) == ("dubber", "1", registry.run_id)
    assert r.folder == cache / "mlflow" / "dubber" / "1" and not r.random_weights
    assert _same_weights(r.checkpoint.model, original.checkpoint.model)
    by_alias = resolve("models:/dubber@champion", cache)
    assert (by_alias.version, by_alias.run_id, by_alias.folder) == ("1", registry.run_id, r.folder)
    with pytest.raises(SourceError, match="models:/dubber/2.*not in the MLflow registry"):
        resolve("models:/dubber/2", cache)
    with pytest.raises(SourceError, match="not in the MLflow registry"):
        resolve("models:/dubber@nobody", cache)
    with pytest.raises(SourceError, match="not in the MLflow registry"):
        resolve("models:/someone_else/1", cache)


@pytest.mark.parametrize(
    "source, message",
    [
        ("hf://org/model", "unknown scheme 'hf'"),
        ("http://example.com/export", "unknown scheme 'http'"),
        ("random:huge", "unknown preset"),
        ("models:/dubber", "models:/NAME/VERSION"),
        ("models:/dubber/latest", "models:/NAME/VERSION"),
        ("{missing}", "no folder at"),
        ("{missing_uri}", "no folder there"),
        ("{empty}", "not a loadable export"),
    ],
)
def test_bad_sources_say_what_was_tried(tmp_path, source, message):
    (tmp_path / "empty").mkdir()
    source = source.format(
        missing=tmp_path / "nowhere",
        missing_uri=(tmp_path / "nowhere").as_uri(),
        empty=tmp_path / "empty",
    )
    with pytest.raises(SourceError, match=message) as err:
        resolve(source, tmp_path / "cache")
    assert isinstance(err.value, ValueError)
