"""Find ingest inputs under one or more roots (local folders or pyarrow-filesystem URIs).

Conventions, all by file name beside the media:
- movies: `X.mp4|mkv|mov|webm|avi`, subtitles `X.srt` (preferred) or `X.vtt`, labels
  `X.labels.json`, and studio stems `X.dialogue.wav|flac` (speech) + `X.me.wav|flac` (music and
  effects), used instead of separation when both are present;
- speech corpora: `U.wav|flac` with its transcript in `U.txt`, or in a `metadata.csv` with rows
  `path|speaker|text` (path relative to the csv) in the same or a parent folder; the speaker is
  the csv's, else the folder name.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict

from pyarrow import fs as pafs

from dubforge import storage
from dubforge.ingest.records import MediaInput

VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".webm", ".avi")
AUDIO_EXTS = (".wav", ".flac")
SUB_EXTS = (".srt", ".vtt")
STEM_SUFFIXES = {"dialogue": "speech", "me": "background"}


def _split(name: str) -> tuple[str, str]:
    """("dir/x.dialogue", ".wav") for "dir/x.dialogue.wav"."""
    dot = name.rfind(".")
    slash = name.rfind("/")
    return (name[:dot], name[dot:].lower()) if dot > slash else (name, "")


def list_files(root: str) -> tuple[pafs.FileSystem, dict[str, int]]:
    """All files under `root` as {path in the filesystem: size}."""
    filesystem, base = storage.resolve(root)
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input root {root} does not exist")
    if info.type == pafs.FileType.File:
        return filesystem, {base: info.size}
    found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    return filesystem, {f.path: f.size for f in found if f.type == pafs.FileType.File}


def _uri(root: str, path: str) -> str:
    """Give a path found under `root` back the root's scheme, so later stages can open it."""
    if storage.is_uri(root) and not root.startswith("file://"):
        return f"{root.split('://', 1)[0]}://{path}"
    return path


def _read(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _metadata_rows(
    filesystem: pafs.FileSystem, files: dict[str, int]
) -> dict[str, tuple[str, str]]:
    """{audio path: (speaker, text)} from every metadata.csv under the root."""
    rows: dict[str, tuple[str, str]] = {}
    for path in sorted(p for p in files if p.rsplit("/", 1)[-1] == "metadata.csv"):
        folder = path.rsplit("/", 1)[0]
        text = _read(filesystem, path).decode("utf-8", "replace")
        for row in csv.reader(io.StringIO(text), delimiter="|"):
            if len(row) >= 3 and row[0] != "path":
                rows[f"{folder}/{row[0]}"] = (row[1], "|".join(row[2:]).strip())
    return rows


def _stems(by_base: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """{movie base: {"speech": path, "background": path}} for movies that ship stem files."""
    stems: dict[str, dict[str, str]] = defaultdict(dict)
    for base, exts in by_base.items():
        head, suffix = _split(base)
        audio = next((exts[e] for e in AUDIO_EXTS if e in exts), None)
        is_movie = any(e in VIDEO_EXTS for e in by_base.get(head, {}))
        if audio and is_movie and suffix[1:] in STEM_SUFFIXES:
            stems[head][STEM_SUFFIXES[suffix[1:]]] = audio
    return stems


def discover(roots: list[str]) -> list[MediaInput]:
    """Every movie and speech utterance under `roots`, sorted by URI."""
    inputs: list[MediaInput] = []
    for root in roots:
        filesystem, files = list_files(root)
        by_base: dict[str, dict[str, str]] = defaultdict(dict)
        for path in files:
            base, ext = _split(path)
            by_base[base][ext] = path
        meta = _metadata_rows(filesystem, files)
        stems = _stems(by_base)
        stem_files = {p for pair in stems.values() for p in pair.values()}
        for path, size in files.items():
            base, ext = _split(path)
            sidecars = by_base[base]
            if ext in VIDEO_EXTS:
                sub = sidecars.get(".srt") or sidecars.get(".vtt")
                labels = by_base.get(f"{base}.labels", {}).get(".json")
                pair = stems.get(base, {})
                inputs.append(
                    MediaInput(
                        uri=_uri(root, path),
                        kind="movie",
                        size=size,
                        subtitles=_uri(root, sub) if sub else None,
                        labels=_uri(root, labels) if labels else None,
                        stems={k: _uri(root, v) for k, v in pair.items()}
                        if len(pair) == 2
                        else None,
                    )
                )
            elif ext in AUDIO_EXTS and path not in stem_files:
                speaker, text = meta.get(path, (None, None))
                if text is None and ".txt" in sidecars:
                    text = _read(filesystem, sidecars[".txt"]).decode("utf-8", "replace").strip()
                parts = path.rsplit("/", 2)
                inputs.append(
                    MediaInput(
                        uri=_uri(root, path),
                        kind="speech",
                        size=size,
                        transcript=text or None,
                        speaker=speaker or (parts[-2] if len(parts) > 1 else None),
                    )
                )
    return sorted(inputs, key=lambda i: i.uri)
