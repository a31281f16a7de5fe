"""The typed config of the `synth` job (jobs/synth.yaml)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from dubforge.config import JobConfig


class SynthConfig(JobConfig):
    """A synthetic movie corpus: N movies of talking faces plus a speech-only TTS corpus."""

    entrypoint: ClassVar[str] = "dubforge.synth.corpus:main"

    job: Literal["synth"] = "synth"
    output: str = Field("runs/corpus", description="folder or URI (file://, s3://, gs://) to write")
    movies: int = Field(10, ge=1, le=10_000, description="number of movies")
    seed: int = Field(0, ge=0, description="random seed; the corpus is a function of it")
    duration: float = Field(30.0, ge=8.0, le=3600.0, description="seconds per movie")
    scene_seconds: float = Field(15.0, ge=6.0, description="target length of a scene")
    speech_utterances: int = Field(48, ge=0, description="utterances in the speech-only corpus")
    speech_speakers: int = Field(6, ge=1, description="voices in the speech-only corpus")
    stems: bool = Field(
        True, description="ship studio stems beside each movie: <id>.dialogue.flac + <id>.me.flac"
    )
    crf: int = Field(20, ge=0, le=51, description="x264 quality (lower is better)")
    workers: int = Field(2, ge=1, description="parallel processes")
    overwrite: bool = Field(False, description="regenerate even if a finished corpus is there")
