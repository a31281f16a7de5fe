"""DNSMOS: non-intrusive MOS predictions of speech quality (Reddy et al., ICASSP 2021/2022).

Microsoft's DNSMOS ONNX models as bundled in the `speechmos` package (nothing is downloaded):
  sig_bak_ovr.onnx  ITU-T P.835 ratings: SIG (speech signal), BAK (background noise
                    intrusiveness), OVRL (overall), each mapped through DNSMOS's polynomial
                    fit onto the 1..5 MOS scale
  model_v8.onnx     ITU-T P.808 overall MOS, from a 120-band log-mel spectrogram
Scoring follows the reference `dnsmos_local.py` that speechmos wraps: 16 kHz mono in [-1, 1];
a clip shorter than 9.01 s is repeated until it is at least that long; 9.01 s windows with a
1 s hop are rated and the ratings averaged. Input at other rates is resampled to 16 kHz
(soxr, as librosa.load in the reference) and clipped to [-1, 1], as a 16-bit wav would be.

The models load once per process (`load_dnsmos`); when they cannot load, every DNSMOS metric
is "not available" with the reason.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from dubforge.eval.audio import check_wave, resample
from dubforge.eval.results import MetricResult, measured, not_available

DNSMOS_RATE = 16000
# metric name -> key of speechmos' result
DNSMOS_KEYS = {
    "dnsmos_sig": "sig_mos",
    "dnsmos_bak": "bak_mos",
    "dnsmos_ovrl": "ovrl_mos",
    "dnsmos_p808": "p808_mos",
}
PRIMARY_MODEL, P808_MODEL = "sig_bak_ovr.onnx", "model_v8.onnx"


class Dnsmos:
    """The DNSMOS P.835 and P.808 predictors from speechmos's bundled models, loaded in
    `__init__`. When they cannot load, `reason` says why and `scores` refuses to run."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._model: Any = None
        try:
            from speechmos import dnsmos

            folder = Path(dnsmos.__file__).parent / "dnsmos_models"
            self._model = dnsmos.DNSMOS(str(folder / PRIMARY_MODEL), str(folder / P808_MODEL))
        # an absent package, a missing or corrupt ONNX file: onnxruntime's errors (NoSuchFile,
        # InvalidProtobuf, ...) derive from Exception only, and any of them means "no model"
        except Exception as e:
            self.reason = f"DNSMOS models (speechmos) could not load: {type(e).__name__}: {e}"

    @property
    def available(self) -> bool:
        """True when the models loaded."""
        return self._model is not None

    def scores(self, wave: np.ndarray, sr: int) -> dict[str, float]:
        """{"sig_mos", "bak_mos", "ovrl_mos", "p808_mos"} of mono audio at `sr`; RuntimeError
        when the models did not load."""
        if self._model is None:
            raise RuntimeError(self.reason)
        x = np.clip(resample(check_wave(wave, sr), sr, DNSMOS_RATE), -1.0, 1.0)
        out = self._model(x.astype(np.float32), DNSMOS_RATE, False)
        return {key: float(out[key]) for key in DNSMOS_KEYS.values()}


@functools.cache
def load_dnsmos() -> Dnsmos:
    """The process-wide `Dnsmos` (its ONNX sessions are built on the first call only)."""
    return Dnsmos()


def dnsmos_metrics(
    model: Dnsmos | None, wave: np.ndarray, sr: int, prefix: str = ""
) -> dict[str, MetricResult]:
    """DNSMOS SIG, BAK, OVRL and P.808 of mono audio at `sr` as `prefix` + "dnsmos_sig", ...;
    "not available" when `model` is None (switched off) or did not load."""
    names = {prefix + name: key for name, key in DNSMOS_KEYS.items()}
    if model is None or not model.available:
        reason = "DNSMOS switched off (EvalConfig.dnsmos)" if model is None else model.reason
        return {name: not_available(name, reason) for name in names}
    scores = model.scores(wave, sr)
    return {name: measured(name, scores[key]) for name, key in names.items()}
