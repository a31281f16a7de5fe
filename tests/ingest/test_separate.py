"""Speech/background separation through the real audio-separator, on tiny random RoFormers.

The models are untrained, so these tests check plumbing (offline loading, rates, lengths, stem
naming, temp files, errors), not separation quality.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dubforge.ingest.separate import Separator, _split_stems, check_offline
from tests.ingest.separator_model import make_tiny_bs_roformer, make_tiny_mel_roformer


def _signal(sample_rate: int, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A 220 Hz tone plus white noise, float32 [n]."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the models on one thread, as a 1-CPU Ray actor does (Ray sets OMP_NUM_THREADS=1): on
    a busy 2-core box two torch threads made a separation ~10x slower (0.3 s -> 1-8 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """One folder with both tiny models and the download_checks.json listing them."""
    d = tmp_path_factory.mktemp("separator_models")
    make_tiny_mel_roformer(d)
    make_tiny_bs_roformer(d)
    return d


@pytest.fixture(scope="module")
def mel(model_dir):
    sep = Separator(str(model_dir), "tiny_mel_band_roformer.ckpt")
    yield sep
    sep.close()


@pytest.fixture
def no_network(monkeypatch):
    """Every DNS lookup or socket connect raises and is recorded (audio-separator downloads with
    requests, which resolves with getaddrinfo and then connects a socket.socket)."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("sample_rate", [24000, 16000])
def test_separates_to_two_mono_arrays_of_input_length(mel, sample_rate):
    audio = _signal(sample_rate)
    speech, background = mel.separate(audio, sample_rate)
    for stem in (speech, background):
        assert stem.dtype == np.float32 and stem.shape == audio.shape
        assert np.isfinite(stem).all() and np.abs(stem).max() > 1e-4
    assert not np.allclose(speech, background)
    # a single-target model's second stem is the residual (mix - vocals) at 44.1 kHz, so the
    # stems add back up to the input up to the two resampling passes
    assert np.abs(speech + background - audio).max() < 0.05


def test_temp_files_are_removed(model_dir):
    sep = Separator(str(model_dir), "tiny_mel_band_roformer.ckpt")
    work_dir = sep._work_dir
    sep.separate(_signal(16000, seconds=0.5), 16000)
    assert list(work_dir.iterdir()) == []
    sep.close()
    assert not work_dir.exists()


def test_call_adds_speech_and_background_columns(mel):
    audio = [_signal(24000, seconds=1.0), _signal(16000, seconds=0.7, seed=1)]
    batch = {"audio": audio, "sample_rate": np.array([24000, 16000]), "clip_id": ["a", "b"]}
    out = mel(batch)
    assert out["clip_id"] == ["a", "b"] and out["audio"] is audio
    for col in ("speech", "background"):
        assert [x.shape for x in out[col]] == [(24000,), (11200,)]
        assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in out[col])


def test_call_names_a_missing_column(mel):
    with pytest.raises(ValueError, match=r"sample_rate"):
        mel({"audio": [_signal(16000, seconds=0.2)]})


@pytest.mark.parametrize(
    "audio, match",
    [
        (np.zeros((2, 1600), np.float32), "1-D"),
        (np.zeros(0, np.float32), "non-empty"),
        (np.full(1600, np.nan, np.float32), "NaN"),
    ],
)
def test_bad_audio_raises_value_error(mel, audio, match):
    with pytest.raises(ValueError, match=match):
        mel.separate(audio, 16000)


def test_bs_roformer_works_through_the_same_code(model_dir):
    sep = Separator(str(model_dir), "tiny_bs_roformer.ckpt")
    audio = _signal(16000, seconds=1.0)
    speech, background = sep.separate(audio, 16000)
    assert speech.shape == background.shape == audio.shape
    assert np.isfinite(speech).all() and np.isfinite(background).all()
    sep.close()


def test_load_and_separate_make_no_network_attempt(model_dir, no_network):
    with pytest.raises(OSError, match="network disabled"):  # the guard really is in place
        socket.create_connection(("example.com", 443), timeout=1)
    no_network.clear()
    sep = Separator(str(model_dir), "tiny_mel_band_roformer.ckpt")
    speech, _ = sep.separate(_signal(16000, seconds=0.5), 16000)
    sep.close()
    assert speech.shape == (8000,)
    assert no_network == []


def test_guard_catches_audio_separators_own_fetch(tmp_path, no_network):
    """Without download_checks.json audio-separator goes to the network: the reason for
    check_offline, and proof that the no_network guard sees its downloads."""
    from audio_separator.separator import Separator as AudioSeparator

    name = make_tiny_mel_roformer(tmp_path)
    (tmp_path / "download_checks.json").unlink()
    raw = AudioSeparator(
        log_level=logging.CRITICAL, model_file_dir=str(tmp_path), output_dir=str(tmp_path)
    )
    with pytest.raises(OSError):  # requests' ConnectionError is an OSError
        raw.load_model(model_filename=name)
    assert no_network


def test_check_offline_passes_for_a_complete_folder(tmp_path):
    check_offline(str(tmp_path), make_tiny_mel_roformer(tmp_path))


def test_check_offline_missing_download_checks(tmp_path):
    name = make_tiny_mel_roformer(tmp_path)
    (tmp_path / "download_checks.json").unlink()
    with pytest.raises(RuntimeError, match=r"download_checks\.json is missing.*roformer_download"):
        check_offline(str(tmp_path), name)
    with pytest.raises(RuntimeError, match="is missing"):  # before audio-separator is built
        Separator(str(tmp_path), name)


def test_check_offline_unlisted_filename(tmp_path):
    make_tiny_mel_roformer(tmp_path)
    with pytest.raises(RuntimeError, match=r"'other\.ckpt' is not listed.*roformer_download_list"):
        check_offline(str(tmp_path), "other.ckpt")


def test_check_offline_missing_lists_and_files(tmp_path):
    name = make_tiny_mel_roformer(tmp_path)
    (tmp_path / "tiny_mel_band_roformer.yaml").unlink()
    with pytest.raises(RuntimeError, match=r"tiny_mel_band_roformer\.yaml'\] not found"):
        check_offline(str(tmp_path), name)
    checks_path = tmp_path / "download_checks.json"
    checks = json.loads(checks_path.read_text())
    del checks["vr_download_list"]
    checks_path.write_text(json.dumps(checks))
    with pytest.raises(RuntimeError, match=r"lacks \['vr_download_list'\]"):
        check_offline(str(tmp_path), name)


def test_config_that_does_not_fit_the_checkpoint_is_a_runtime_error(tmp_path):
    # audio-separator itself calls sys.exit(1) here, which would kill a Ray actor silently
    name = make_tiny_mel_roformer(tmp_path)
    config_path = tmp_path / "tiny_mel_band_roformer.yaml"
    config = yaml.load(config_path.read_text(), Loader=yaml.FullLoader)
    config["model"]["dim"] = 48
    config_path.write_text(yaml.dump(config))
    with pytest.raises(RuntimeError, match=r"(?s)could not load.*YAML config"):
        Separator(str(tmp_path), name)


def test_stems_are_told_apart_by_name():
    a, b, c = (np.full(4, v, np.float32) for v in (1.0, 2.0, 3.0))
    speech, background = _split_stems({"No vocals": b, "vocals": a})
    assert (speech == a).all() and (background == b).all()
    speech, background = _split_stems({"Instrumental": b, "Vocals": a})
    assert (speech == a).all() and (background == b).all()
    speech, background = _split_stems({"drums": b, "vocals": a, "bass": c})  # multi-stem model
    assert (speech == a).all() and (background == b + c).all()
    with pytest.raises(RuntimeError, match="exactly one of"):
        _split_stems({"Instrumental": b, "No Instrumental": a})
