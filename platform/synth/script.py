"""The plan of a synthetic movie: speakers, scenes and lines, drawn from a seed.

Everything random about a movie is decided here, from `numpy.random.default_rng(seed)`, so a
plan (and hence the rendered movie) is a pure function of (movie index, corpus seed, config).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dubforge.synth.tts import Utterance, Word, espeak

SYNTH_SCENES = ("monologue", "dialogue", "narration")
EMOTIONS = ("neutral", "calm", "excited", "sad")
# espeak-ng voice variants (espeak-ng-data/voices/!v), grouped by the gender they sound like
VOICES = {
    "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"),
    "female": ("f1", "f2", "f3", "f4", "f5"),
}
# Emotions change delivery: (rate delta in words/min, pitch delta, pitch range)
_DELIVERY = {
    "neutral": (0, 0, 50),
    "calm": (-25, -5, 35),
    "excited": (40, 12, 80),
    "sad": (-35, -10, 25),
}
RESOLUTIONS = ((640, 360), (854, 480), (480, 480), (960, 540), (720, 576))
BACKGROUNDS = ("noise", "hum", "music", "ambience")

_SUBJECTS = (
    "the captain",
    "my brother",
    "the old doctor",
    "our neighbor",
    "the pilot",
    "your sister",
    "the teacher",
    "a stranger",
    "the mayor",
    "the baker",
    "the young soldier",
    "her father",
)
_VERBS = (
    "left",
    "found",
    "painted",
    "carried",
    "forgot",
    "opened",
    "repaired",
    "hid",
    "sold",
    "watched",
    "followed",
    "promised",
)
_OBJECTS = (
    "the lantern",
    "a letter",
    "the red boat",
    "the garden gate",
    "an old map",
    "the piano",
    "the radio",
    "a silver key",
    "the wooden box",
    "the last train",
    "the kitchen window",
)
_PLACES = (
    "by the river",
    "before dawn",
    "in the harbor",
    "after the storm",
    "near the station",
    "under the bridge",
    "at the market",
    "behind the church",
    "on the hill",
    "in the rain",
)
_TEMPLATES = (
    "{S} {V} {O} {P}.",
    "I think {s} {V} {O}.",
    "Did {s} really say that {O} was {P}?",
    "We should wait here until {s} comes back.",
    "Nobody believed that {s} {V} {O} {P}.",
    "Listen to me, {s} {V} {O} and never told us.",
    "Why would {s} leave {O} {P}?",
    "Tomorrow {s} will bring {O} {P}.",
)


@dataclass(frozen=True)
class Speaker:
    """A voice; `face` names the photo variant shown when the speaker is on screen."""

    id: str
    gender: str
    voice: str
    rate: int
    pitch: int
    face: str | None


@dataclass(frozen=True)
class Line:
    """One subtitle line; `offset` places its utterance in the movie, words are in movie time."""

    index: int
    scene: int
    scene_type: str
    speaker: str
    text: str
    emotion: str
    offset: float
    words: tuple[Word, ...]
    speech_db: float
    bg_db: float

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        return self.words[-1].end


@dataclass(frozen=True)
class Scene:
    index: int
    type: str
    start: float
    end: float
    face: str  # face variant on screen for monologue / narration


@dataclass(frozen=True)
class MoviePlan:
    movie_id: str
    seed: int
    duration: float
    width: int
    height: int
    channels: int
    sample_rate: int
    background: str
    speakers: tuple[Speaker, ...]
    scenes: tuple[Scene, ...]
    lines: tuple[Line, ...]

    def speaker(self, speaker_id: str) -> Speaker:
        return next(s for s in self.speakers if s.id == speaker_id)


def sentence(rng: np.random.Generator) -> str:
    """A short English sentence from the word banks (ASCII only)."""
    t = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    s = _SUBJECTS[rng.integers(len(_SUBJECTS))]
    text = t.format(
        S=s.capitalize(),
        s=s,
        V=_VERBS[rng.integers(len(_VERBS))],
        O=_OBJECTS[rng.integers(len(_OBJECTS))],
        P=_PLACES[rng.integers(len(_PLACES))],
    )
    return text[0].upper() + text[1:]


def draw_speaker(rng: np.random.Generator, speaker_id: str, face: str | None) -> Speaker:
    """A speaker with a random gender, espeak-ng variant, base rate and pitch."""
    gender = ("male", "female")[rng.integers(2)]
    variant = VOICES[gender][rng.integers(len(VOICES[gender]))]
    base_pitch = 35 if gender == "male" else 60
    return Speaker(
        id=speaker_id,
        gender=gender,
        voice=f"en+{variant}",
        rate=int(rng.integers(140, 200)),
        pitch=int(base_pitch + rng.integers(-10, 11)),
        face=face,
    )


def delivery(speaker: Speaker, emotion: str) -> tuple[int, int, int]:
    """(rate, pitch, pitch range) for a speaker delivering a line with an emotion."""
    d_rate, d_pitch, rng_ = _DELIVERY[emotion]
    return speaker.rate + d_rate, int(np.clip(speaker.pitch + d_pitch, 0, 99)), rng_


def plan_movie(
    index: int, seed: int, duration: float, scene_seconds: float
) -> tuple[MoviePlan, dict[int, Utterance]]:
    """Plan movie `index` of a corpus drawn with `seed`; returns the plan and each line's speech.

    Lines are synthesized while planning so they can be placed back to back with real lengths.

    Scene types rotate with the movie index so every type appears in any corpus of 3+ movies.
    Every movie has one line whose background falls below -40 dB, and odd-numbered movies one
    near-silent line, so the ingest energy filter always has something to reject.
    """
    rng = np.random.default_rng([seed, index])
    movie_id = f"movie_{index:03d}"
    width, height = RESOLUTIONS[index % len(RESOLUTIONS)]
    speakers = (
        draw_speaker(rng, f"{movie_id}_spk0", "a"),
        draw_speaker(rng, f"{movie_id}_spk1", "b"),
        draw_speaker(rng, f"{movie_id}_narrator", None),
    )
    n_scenes = max(1, int(round(duration / scene_seconds)))
    bounds = np.linspace(0.0, duration, n_scenes + 1)
    scenes = tuple(
        Scene(k, SYNTH_SCENES[(index + k) % 3], float(bounds[k]), float(bounds[k + 1]), "ab"[k % 2])
        for k in range(n_scenes)
    )
    lines: list[Line] = []
    speech: dict[int, Utterance] = {}
    for scene in scenes:
        t = scene.start + float(rng.uniform(0.3, 0.8))
        for turn in range(1000):
            if scene.type == "dialogue":
                spk = speakers[turn % 2]
            elif scene.type == "monologue":
                spk = speakers[0] if scene.face == "a" else speakers[1]
            else:
                spk = speakers[2]
            text = sentence(rng)
            emotion = EMOTIONS[rng.integers(len(EMOTIONS))]
            rate, pitch, pitch_range = delivery(spk, emotion)
            utt = espeak().synthesize(text, spk.voice, rate, pitch, pitch_range)
            if t + utt.words[-1].end > scene.end - 0.3:
                break
            words = tuple(
                replace(w, start=round(t + w.start, 4), end=round(t + w.end, 4)) for w in utt.words
            )
            speech[len(lines)] = utt
            lines.append(
                Line(
                    index=len(lines),
                    scene=scene.index,
                    scene_type=scene.type,
                    speaker=spk.id,
                    text=text,
                    emotion=emotion,
                    offset=round(t, 4),
                    words=words,
                    speech_db=float(rng.uniform(-23.0, -17.0)),
                    bg_db=float(rng.uniform(-32.0, -22.0)),
                )
            )
            t = words[-1].end + float(rng.uniform(0.4, 1.2))
    lines = _mark_energy_cases(lines, index, rng)
    return MoviePlan(
        movie_id=movie_id,
        seed=seed,
        duration=duration,
        width=width,
        height=height,
        channels=2 if index % 2 == 0 else 1,
        sample_rate=48000 if index % 3 else 44100,
        background=BACKGROUNDS[index % len(BACKGROUNDS)],
        speakers=speakers,
        scenes=scenes,
        lines=tuple(lines),
    ), speech


def _mark_energy_cases(lines: list[Line], index: int, rng: np.random.Generator) -> list[Line]:
    if len(lines) < 2:
        return lines
    low_bg = int(rng.integers(1, len(lines)))
    lines[low_bg] = replace(lines[low_bg], bg_db=-55.0)
    if index % 2 == 1 and len(lines) >= 3:
        quiet = next(i for i in range(len(lines) - 1, 0, -1) if i != low_bg)
        lines[quiet] = replace(lines[quiet], speech_db=-55.0)
    return lines
