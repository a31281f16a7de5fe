"""Speech with word timings from espeak-ng's C library.

The espeak-ng command line prints no timings, but its library reports a WORD event with the
audio position (ms) of every word while it synthesizes. We bind the few library calls we need
with ctypes; the library is process-global, so one process synthesizes one utterance at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from dataclasses import dataclass

import numpy as np

# espeak-ng/speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset of the word
        ("length", ctypes.c_int),  # word length in characters
        ("audio_position", ctypes.c_int),  # ms from the start of the utterance
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Word:
    """One spoken word; times in seconds from the start of its utterance."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Utterance:
    """Mono float32 speech in [-1, 1] at `sample_rate` with its word timings."""

    wave: np.ndarray
    sample_rate: int
    words: tuple[Word, ...]


class Espeak:
    """A handle on libespeak-ng; create once per process (see `espeak()`)."""

    def __init__(self, library: str | None = None) -> None:
        path = library or ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as e:
            raise RuntimeError(
                f"cannot load the espeak-ng library ({path}): install it with "
                "`apt-get install espeak-ng` (make setup does this)"
            ) from e
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed: is espeak-ng-data installed?")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lock = threading.Lock()

    def _on_audio(self, wav, numsamples, events) -> int:  # noqa: ANN001 - ctypes callback
        if numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            # espeak-ng can close an utterance with a WORD event at position 0, length 0
            if ev.type == _EVENT_WORD and ev.text_position > 0 and ev.length > 0:
                self._events.append((ev.text_position, ev.length, ev.audio_position))
            i += 1
        return 0

    def synthesize(
        self, text: str, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50
    ) -> Utterance:
        """Speak `text` with an espeak-ng voice (e.g. "en+f3"), rate in words/min, pitch 0-100."""
        if not text.strip():
            raise ValueError("cannot synthesize empty text")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")
            for param, value in (
                (_PARAM_RATE, rate),
                (_PARAM_PITCH, pitch),
                (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, 100),
            ):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            err = self._lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err}")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            events = list(self._events)
        wave = pcm.astype(np.float32) / 32768.0
        return Utterance(wave, self.sample_rate, _words(text, events, wave, self.sample_rate))


def _words(
    text: str, events: list[tuple[int, int, int]], wave: np.ndarray, sr: int
) -> tuple[Word, ...]:
    """Time every word of `text` from espeak-ng's WORD events.

    espeak-ng sometimes voices a function word with its neighbour under one event ("that the",
    "in the"); such words share that event's span in proportion to their length. A word ends at
    the last voiced sample before the next event.
    """
    tokens = [(m.start(), m.group()) for m in re.finditer(r"[A-Za-z0-9']+", text)]
    if not tokens or not events:
        return ()
    voiced = np.flatnonzero(np.abs(wave) > 0.01)
    last_voiced = float(voiced[-1] + 1) / sr if voiced.size else len(wave) / sr
    # text_position counts characters from 1; map each event to the first token it covers
    firsts = []
    for char_pos, _, _ in events:
        k = next((i for i, (off, _) in enumerate(tokens) if off >= char_pos - 1), len(tokens))
        firsts.append(k)
    firsts[0] = 0
    assert firsts == sorted(firsts), f"word events out of order for {text!r}: {events}"
    words: list[Word] = []
    for i, (_, _, ms) in enumerate(events):
        first, stop_tok = firsts[i], firsts[i + 1] if i + 1 < len(events) else len(tokens)
        if first >= stop_tok:
            continue
        start = ms / 1000.0
        stop = events[i + 1][2] / 1000.0 if i + 1 < len(events) else last_voiced
        seg = voiced[(voiced >= int(start * sr)) & (voiced < int(stop * sr))]
        end = float(seg[-1] + 1) / sr if seg.size else stop
        group = tokens[first:stop_tok]
        chars = np.cumsum([0] + [len(t) for _, t in group], dtype=np.float64)
        bounds = start + (end - start) * chars / chars[-1]
        for (_, tok), a, b in zip(group, bounds[:-1], bounds[1:], strict=True):
            words.append(Word(tok, round(float(a), 4), round(float(max(b, a)), 4)))
    return tuple(words)


_ENGINE: Espeak | None = None


def espeak() -> Espeak:
    """The process-wide espeak-ng engine, created on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
