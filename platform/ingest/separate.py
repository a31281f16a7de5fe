"""Speech/background separation with audio-separator's RoFormer models (Mel-Band or BS-RoFormer).

audio-separator only reads a file path and writes 44.1 kHz stereo files, so every clip makes a
round trip through a private temp folder: mono [n] at the caller's rate -> 44.1 kHz wav -> model
-> one file per stem -> mono [n] at the caller's rate again.

Nothing may be downloaded: `check_offline` vets the model folder first, because
`Separator.load_model()` fetches download_checks.json from GitHub when it is missing, refuses a
checkpoint not listed there (or in its bundled models.json), and fetches any listed file that is
not on disk.

Shape key: n = samples at the caller's rate, m = samples at 44.1 kHz, c = channels (2).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
import weakref
from importlib import resources
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

if TYPE_CHECKING:
    from audio_separator.separator import Separator as AudioSeparator

MODEL_RATE = 44100  # audio-separator's working and output rate; RoFormer models are trained at it
LOG_LEVEL = logging.ERROR  # it logs every clip at INFO, and WARNING for each clip under 10 s

# Every list audio-separator's list_supported_model_files() indexes (a missing one is a KeyError).
DOWNLOAD_LISTS = (
    "vr_download_list",
    "mdx_download_list",
    "mdx_download_vip_list",
    "demucs_download_list",
    "mdx23c_download_list",
    "mdx23c_download_vip_list",
    "roformer_download_list",
)
# RoFormer and MDX23C checkpoints are both "MDXC" to audio-separator; each entry is
# {friendly name: {checkpoint: yaml config}}, merged in this order (later names win).
_MDXC_LISTS = ("mdx23c_download_list", "mdx23c_download_vip_list", "roformer_download_list")
_BUNDLED_MDXC_LISTS = ("mdx23c_download_list", "roformer_download_list")

# Stem names (lower case) that mean "the voice"; every other stem is background.
SPEECH_STEMS = frozenset({"vocals", "vocal", "voice", "speech", "dialog", "dialogue"})


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{path} is not readable JSON ({e}): rewrite it") from e


def _mdxc_entries(checks: dict) -> dict[str, dict[str, str]]:
    """{friendly name: {checkpoint: yaml}} as audio-separator merges them for MDXC models."""
    with resources.files("audio_separator").joinpath("models.json").open(encoding="utf-8") as f:
        bundled = json.load(f)
    entries: dict[str, dict[str, str]] = {}
    for key in _MDXC_LISTS:
        entries.update(checks[key])
    for key in _BUNDLED_MDXC_LISTS:
        entries.update(bundled.get(key, {}))
    return entries


def check_offline(model_dir: str, model_filename: str) -> None:
    """Raise RuntimeError unless audio-separator can load `model_filename` from `model_dir`
    without touching the network: download_checks.json present with every list audio-separator
    reads, the checkpoint listed as {friendly name: {checkpoint: yaml}} (normally under
    "roformer_download_list"), and every file of that entry on disk."""
    folder = Path(model_dir)
    checks_path = folder / "download_checks.json"
    if not checks_path.is_file():
        raise RuntimeError(
            f"{checks_path} is missing, so audio-separator would download it from GitHub: write "
            f'it with {{"roformer_download_list": {{"<name>": {{"{model_filename}": '
            f'"<config>.yaml"}}}}}} plus the empty lists {list(DOWNLOAD_LISTS)}'
        )
    checks = _read_json(checks_path)
    missing_keys = [key for key in DOWNLOAD_LISTS if not isinstance(checks.get(key), dict)]
    if missing_keys:
        raise RuntimeError(
            f"{checks_path} lacks {missing_keys}: audio-separator reads all of them; add each "
            "missing one as an empty object {}"
        )
    entries = _mdxc_entries(checks).values()
    entry = next((e for e in entries if isinstance(e, dict) and model_filename in e), None)
    if entry is None:
        raise RuntimeError(
            f"{model_filename!r} is not listed in {checks_path} (nor in audio-separator's "
            "bundled models.json), so audio-separator would refuse it: add "
            f'"<name>": {{"{model_filename}": "<config>.yaml"}} under "roformer_download_list"'
        )
    # audio-separator fetches every file of the matched entry that is not on disk
    absent = [name for pair in entry.items() for name in pair if not (folder / name).is_file()]
    if absent:
        raise RuntimeError(
            f"{absent} not found in {folder}, so audio-separator would try to download them: "
            "copy the checkpoint and its YAML config into that folder"
        )


class _ErrorCapture(logging.Handler):
    """Keeps audio-separator's ERROR records: its loader logs the cause, then calls sys.exit."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _build(model_dir: str, output_dir: str, use_gpu: bool) -> AudioSeparator:
    """audio-separator's Separator writing float WAVs into output_dir, on the chosen device."""
    # imported here: it pulls in onnxruntime and librosa (~2 s), which a pipeline driver that
    # only wires stages should not pay
    from audio_separator.separator import Separator as AudioSeparator

    env_dir = os.environ.get("AUDIO_SEPARATOR_MODEL_DIR")
    if env_dir and Path(env_dir).resolve() != Path(model_dir).resolve():
        raise RuntimeError(
            f"AUDIO_SEPARATOR_MODEL_DIR={env_dir} overrides model_dir={model_dir} inside "
            "audio-separator: unset it or pass that folder as model_dir"
        )
    logging.getLogger("audio_separator").setLevel(LOG_LEVEL)  # its roformer loader logs too
    sep = AudioSeparator(
        log_level=LOG_LEVEL,
        model_file_dir=model_dir,
        output_dir=output_dir,
        output_format="WAV",
        # soundfile keeps the input's FLOAT subtype (no int16 rounding, no ffmpeg subprocess)
        use_soundfile=True,
        # rescale only audio that would clip, so stem levels stay those of the input
        normalization_threshold=1.0,
        sample_rate=MODEL_RATE,
    )
    # audio-separator picks CUDA by itself whenever torch sees it
    cuda = sep.torch_device.type == "cuda"
    if use_gpu and not cuda:
        raise RuntimeError("use_gpu=True but torch sees no CUDA device: pass use_gpu=False")
    if not use_gpu and cuda:
        sep.torch_device = sep.torch_device_cpu
        sep.onnx_execution_provider = ["CPUExecutionProvider"]
    return sep


def _load(sep: AudioSeparator, model_dir: str, model_filename: str) -> None:
    """sep.load_model, with its sys.exit on a bad checkpoint turned into a RuntimeError."""
    capture = _ErrorCapture()
    logger = logging.getLogger("audio_separator")
    logger.addHandler(capture)
    try:
        sep.load_model(model_filename=model_filename)
    except (SystemExit, Exception) as e:
        cause = capture.messages[0] if capture.messages else repr(e)
        raise RuntimeError(
            f"audio-separator could not load {Path(model_dir) / model_filename}: {cause[:500]} "
            "-- check that the YAML config describes the checkpoint's architecture"
        ) from e
    finally:
        logger.removeHandler(capture)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return x.astype(np.float32, copy=False)
    g = gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to n samples: resampling rounds the length up to whole output samples."""
    return x[:n] if x.shape[0] >= n else np.pad(x, (0, n - x.shape[0]))


def _check_audio(audio: np.ndarray, sample_rate: int) -> None:
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.size == 0:
        shape = getattr(audio, "shape", type(audio).__name__)
        raise ValueError(f"audio must be a non-empty 1-D (mono) array, got {shape}: mix down first")
    if not np.isfinite(audio).all():
        raise ValueError("audio has NaN or inf samples: reject the clip before separation")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate}")


def _stem_name(path: Path, base: str) -> str:
    """Stem from audio-separator's output name "<base>_(<stem>)_<model name>.wav"."""
    prefix = f"{base}_("
    if not path.name.startswith(prefix) or ")_" not in path.name:
        raise RuntimeError(f"unexpected audio-separator output name {path.name!r}")
    return path.name[len(prefix) :].split(")_", 1)[0]


def _read_mono(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # [m, c]
    if rate != MODEL_RATE:
        raise RuntimeError(f"{path.name} is at {rate} Hz, expected {MODEL_RATE}")
    return data.mean(axis=1)  # [m]


def _split_stems(stems: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(speech [m], background [m]): the one speech-named stem, and the sum of all the others
    (multi-stem models split the background into drums, bass, ...)."""
    speech = [name for name in stems if name.lower() in SPEECH_STEMS]
    if len(speech) != 1 or len(stems) < 2:
        raise RuntimeError(
            f"the model wrote stems {sorted(stems)}; the stage needs exactly one of "
            f"{sorted(SPEECH_STEMS)} and at least one other: use a vocals/instrumental model"
        )
    background = np.sum([x for name, x in stems.items() if name != speech[0]], axis=0)
    return stems[speech[0]], background.astype(np.float32)


class Separator:
    """Splits mono clips into speech and background with an audio-separator RoFormer model.

    A callable class for a Ray Data actor pool: the model loads once in __init__, then
    `__call__` separates every row of a batch. Not thread-safe (audio-separator keeps per-file
    state on its loaded model): one instance per actor. It owns a temp folder, deleted by
    close() or when the instance is collected.
    """

    def __init__(self, model_dir: str, model_filename: str, use_gpu: bool = False) -> None:
        """Vet the model folder (offline), then build audio-separator and load the model once.

        model_dir holds the checkpoint, its YAML config and download_checks.json; use_gpu=False
        keeps inference on the CPU even when CUDA is visible.
        """
        check_offline(model_dir, model_filename)
        self._work_dir = Path(tempfile.mkdtemp(prefix="dubforge-separate-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._work_dir, ignore_errors=True)
        self._sep = _build(model_dir, str(self._work_dir), use_gpu)
        _load(self._sep, model_dir, model_filename)

    def close(self) -> None:
        """Delete the temp folder now rather than when the object is collected."""
        self._cleanup()

    def _run(self, mix: np.ndarray) -> dict[str, np.ndarray]:
        """{stem name: [m]} for a mono mix [m] at 44.1 kHz; its temp files are always deleted."""
        base = f"mix-{uuid.uuid4().hex}"  # unique, and free of the characters it sanitises
        in_path = self._work_dir / f"{base}.wav"
        try:
            sf.write(in_path, mix, MODEL_RATE, subtype="FLOAT")
            names = self._sep.separate(str(in_path))  # file names relative to the work dir
            return {
                _stem_name(Path(name), base): _read_mono(self._work_dir / name) for name in names
            }
        finally:
            for path in self._work_dir.glob(f"{base}*"):
                path.unlink(missing_ok=True)

    def separate(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """(speech, background) for mono float audio [n] at any rate; both are float32 [n] at
        the same rate. Raises ValueError for empty, multi-channel or non-finite audio."""
        _check_audio(audio, sample_rate)
        n, rate = audio.shape[0], int(sample_rate)
        mix = _resample(audio, rate, MODEL_RATE)  # [m]
        speech, background = _split_stems(self._run(mix))  # [m], [m]
        return (
            _fit(_resample(speech, MODEL_RATE, rate), n),
            _fit(_resample(background, MODEL_RATE, rate), n),
        )

    def __call__(self, batch: dict) -> dict:
        """A Ray Data batch with columns "audio" (1-D float arrays) and "sample_rate", plus the
        new columns "speech" and "background" (float32 arrays, one per row, each as long as its
        row's audio)."""
        missing = [col for col in ("audio", "sample_rate") if col not in batch]
        if missing:
            raise ValueError(f"batch lacks column(s) {missing}: the decode stage must add them")
        pairs = [
            self.separate(np.asarray(audio, dtype=np.float32), int(rate))
            for audio, rate in zip(batch["audio"], batch["sample_rate"], strict=True)
        ]
        return {
            **batch,
            "speech": [speech for speech, _ in pairs],
            "background": [background for _, background in pairs],
        }
