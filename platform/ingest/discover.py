"""Find ingest inputs under one or more roots (local folders or pyarrow-filesystem URIs), and
account for every other file there.

Conventions, all by file name beside the media (extensions are case-insensitive):
- movies: `X.mp4|mkv|mov|webm|avi|m4v|ts|mts|...`, subtitles `X.srt` (preferred) or `X.vtt`,
  labels `X.labels.json`, and studio stems `X.dialogue.<audio>` (speech) + `X.me.<audio>` (music
  and effects), used instead of separation when both are present;
- audio-only media (`X.m4a|mp3|aac|ogg|opus|wav|flac|...`) with subtitles: clips for the tasks
  that need no video;
- speech corpora: `U.wav|flac|...` with its transcript in `U.txt`, or in a `metadata.csv` with
  rows `path|speaker|text` (path relative to the csv) in the same or a parent folder; the speaker
  is the csv's, else the folder name;
- a file whose extension says nothing (none, or one we do not know) is probed: media by content.

Every file gets one outcome: an input (`MediaInput`, decided later by the probe) or a `FileRow`
(a sidecar that an input uses, or a file that is not used and why: `not_media`,
`orphan_subtitles`, `lone_stem`, `ignored_sidecar`, `broken_link`, `unreadable`).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field

from pyarrow import fs as pafs

from dubforge import storage
from dubforge.ingest.records import MediaInput

VIDEO_EXTS = frozenset(
    ".mp4 .mkv .mov .webm .avi .m4v .ts .mts .m2ts .mpg .mpeg .wmv .flv .3gp .ogv .mxf".split()
)
AUDIO_EXTS = frozenset(".wav .flac .m4a .mp3 .aac .ogg .opus .wma .aif .aiff .ac3 .eac3".split())
SUB_EXTS = (".srt", ".vtt")
STEM_SUFFIXES = {".dialogue": "speech", ".me": "background"}
# files that are never media, whatever ffprobe would make of them (an image probes as video)
NON_MEDIA_EXTS = frozenset(
    ".txt .json .csv .md .nfo .xml .yaml .yml .pdf .doc .docx .html .htm .py .sh .log .ini "
    ".jpg .jpeg .png .gif .bmp .webp .tif .tiff .svg .zip .tar .gz .bz2 .xz .7z .rar .ass .ssa "
    ".sub .idx .parquet .npy .db .sqlite .lock".split()
)


@dataclass(frozen=True)
class FileRow:
    """A file under an input root that is not itself an input: a used sidecar (accepted) or a
    file not used, with the reason."""

    uri: str
    status: str
    reason: str
    detail: str
    owner: str = ""  # the input id of the media a sidecar belongs to


@dataclass
class Discovery:
    inputs: list[MediaInput] = field(default_factory=list)
    files: list[FileRow] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)  # every file found, as uri


def _split(name: str) -> tuple[str, str]:
    """("dir/x.dialogue", ".wav") for "dir/x.dialogue.WAV"."""
    dot = name.rfind(".")
    slash = name.rfind("/")
    return (name[:dot], name[dot:].lower()) if dot > slash + 1 else (name, "")


@dataclass(frozen=True)
class _Entry:
    path: str
    size: int
    regular: bool
    problem: tuple[str, str] | None = None  # (reason, detail) when it cannot be read at all


def _walk_local(base: str) -> list[_Entry]:
    """Every name os.walk lists as a file (links not followed into folders), with what stat
    says of it; a symlink loop or dangling link is an entry with a problem, not an error."""
    entries: list[_Entry] = []
    errors: list[OSError] = []
    for folder, _, names in os.walk(base, followlinks=False, onerror=errors.append):
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError as e:
                reason = "broken_link" if e.errno in (errno.ELOOP, errno.ENOENT) else "unreadable"
                what = "a symlink loop" if e.errno == errno.ELOOP else e.strerror
                entries.append(_Entry(path, 0, False, (reason, f"{what} ({path})")))
                continue
            entries.append(_Entry(path, st.st_size, stat.S_ISREG(st.st_mode)))
    for e in errors:
        if e.filename and e.filename != base:
            entries.append(_Entry(str(e.filename), 0, False, ("unreadable", f"folder: {e}")))
    return entries


def list_entries(root: str) -> tuple[pafs.FileSystem, list[_Entry]]:
    """All files under `root` (local: through os.walk, so special files count too)."""
    filesystem, base = storage.resolve(root)
    if storage.is_local(root):
        local = str(storage.local_path(root))
        if not os.path.lexists(local):
            raise FileNotFoundError(f"input root {root} does not exist")
        if not os.path.isdir(local):
            st = os.stat(local)
            return filesystem, [_Entry(local, st.st_size, stat.S_ISREG(st.st_mode))]
        return filesystem, _walk_local(local)
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input root {root} does not exist")
    if info.type == pafs.FileType.File:
        return filesystem, [_Entry(base, info.size, True)]
    found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    return filesystem, [_Entry(f.path, f.size, True) for f in found if f.type == pafs.FileType.File]


def _uri(root: str, path: str) -> str:
    """Give a path found under `root` back the root's scheme, so later stages can open it."""
    if storage.is_uri(root) and not root.startswith("file://"):
        return f"{root.split('://', 1)[0]}://{path}"
    return path


def _read(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _metadata_rows(
    filesystem: pafs.FileSystem, csvs: list[str]
) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """{audio path: (speaker, text, csv path)} from the metadata.csv files, and {csv: problem}
    for the ones that could not be read."""
    rows: dict[str, tuple[str, str, str]] = {}
    problems: dict[str, str] = {}
    for path in sorted(csvs):
        folder = path.rsplit("/", 1)[0]
        try:
            text = _read(filesystem, path).decode("utf-8", "replace")
        except OSError as e:
            problems[path] = f"{type(e).__name__}: {e}"
            continue
        for row in csv.reader(io.StringIO(text), delimiter="|"):
            if len(row) >= 3 and row[0] != "path":
                audio = os.path.normpath(f"{folder}/{row[0]}")
                rows[audio] = (row[1], "|".join(row[2:]).strip(), path)
    return rows, problems


def _kind(path: str) -> str:
    """What a file is by its name: "video", "audio", "stem", "subtitles", "sidecar" (.txt,
    .json, metadata.csv), "nonmedia" or "unknown" (to be probed)."""
    base, ext = _split(path)
    name = path.rsplit("/", 1)[-1]
    if name.lower() == "metadata.csv" or ext in (".txt", ".json"):
        return "sidecar"
    if ext in SUB_EXTS:
        return "subtitles"
    if ext in VIDEO_EXTS:
        return "video"
    if ext in AUDIO_EXTS:
        return "stem" if _split(base)[1] in STEM_SUFFIXES else "audio"
    if name.startswith(".") or ext in NON_MEDIA_EXTS:
        return "nonmedia"
    return "unknown"


class _Root:
    """One root's files, grouped by base name, and the rows found for them so far."""

    def __init__(self, root: str, out: Discovery) -> None:
        self.root, self.out = root, out
        self.filesystem, entries = list_entries(root)
        self.entries = {e.path: e for e in entries}
        self.by_base: dict[str, dict[str, str]] = defaultdict(dict)
        for path in self.entries:
            base, ext = _split(path)
            self.by_base[base][ext] = path
        csvs = [p for p in self.entries if p.rsplit("/", 1)[-1].lower() == "metadata.csv"]
        self.meta, self.csv_problems = _metadata_rows(self.filesystem, csvs)
        self.used_csvs: set[str] = set()
        self.claimed: set[str] = set()

    def uri(self, path: str) -> str:
        return _uri(self.root, path)

    def row(self, path: str, status: str, reason: str, detail: str, owner: str = "") -> None:
        """The file's one row (a file claimed already keeps its first)."""
        if path not in self.claimed:
            self.claimed.add(path)
            self.out.files.append(FileRow(self.uri(path), status, reason, detail, owner))

    def read_text(self, path: str) -> str | None:
        try:
            return _read(self.filesystem, path).decode("utf-8", "replace").strip()
        except OSError:
            return None

    def stems_of(self, head: str) -> dict[str, str]:
        """{"speech": path, "background": path} of the stems named after `head`."""
        out = {}
        for suffix, stem in STEM_SUFFIXES.items():
            exts = self.by_base.get(head + suffix, {})
            audio = sorted(p for e, p in exts.items() if e in AUDIO_EXTS)
            if audio:
                out[stem] = audio[0]
        return out


def _media_input(r: _Root, path: str, kind: str) -> None:
    """The input for a media file (video, audio or unknown by name), and its sidecars' rows."""
    base, _ = _split(path)
    sidecars = r.by_base[base]
    subs = [sidecars[e] for e in SUB_EXTS if e in sidecars]
    labels = r.by_base.get(f"{base}.labels", {}).get(".json")
    stems = r.stems_of(base) if kind != "audio" else {}
    speaker, text, csv_path = r.meta.get(os.path.normpath(path), (None, None, None))
    txt = sidecars.get(".txt")
    if text is None and txt:
        text = r.read_text(txt)
    input_kind = {"video": "movie", "unknown": "unknown"}.get(kind, "audio")
    if kind == "audio" and text and not subs:
        input_kind = "speech"
        if csv_path:
            r.used_csvs.add(csv_path)
    parts = path.rsplit("/", 2)
    inp = MediaInput(
        uri=r.uri(path),
        kind=input_kind,
        size=r.entries[path].size,
        subtitles=r.uri(subs[0]) if subs else None,
        labels=r.uri(labels) if labels and input_kind != "speech" else None,
        stems={k: r.uri(v) for k, v in stems.items()} if len(stems) == 2 else None,
        transcript=text or None if input_kind == "speech" else None,
        speaker=speaker or (parts[-2] if len(parts) > 1 else None),
    )
    r.out.inputs.append(inp)
    r.claimed.add(path)
    owner, what = inp.input_id, path.rsplit("/", 1)[-1]
    for i, s in enumerate(subs):
        if i == 0:
            r.row(s, "accepted", "sidecar", f"subtitles of {what}", owner)
        else:
            detail = f"{subs[0].rsplit('/', 1)[-1]} is used for {what}"
            r.row(s, "rejected", "ignored_sidecar", detail, owner)
    if labels:
        if input_kind == "speech":
            r.row(labels, "rejected", "ignored_sidecar", f"{what} is a speech utterance", owner)
        else:
            r.row(labels, "accepted", "sidecar", f"labels of {what}", owner)
    if txt:
        if input_kind == "speech" and csv_path is None:
            r.row(txt, "accepted", "sidecar", f"transcript of {what}", owner)
        elif input_kind == "speech":
            detail = f"transcript of {what}; its metadata.csv row was used"
            r.row(txt, "accepted", "sidecar", detail, owner)
        else:
            detail = f"{what} has subtitles or a metadata.csv row, which are used instead"
            r.row(txt, "rejected", "ignored_sidecar", detail, owner)
    for stem, p in stems.items():
        if len(stems) == 2:
            r.row(p, "accepted", "sidecar", f"{stem} stem of {what}", owner)
        else:
            detail = f"{stem} stem of {what} without its partner: the movie is separated instead"
            r.row(p, "rejected", "lone_stem", detail, owner)


def _leftover(r: _Root, path: str) -> None:
    """The row of a file no input claimed."""
    kind = _kind(path)
    name = path.rsplit("/", 1)[-1]
    base, ext = _split(path)
    stem_name = base.rsplit("/", 1)[-1]
    if kind == "subtitles":
        r.row(path, "rejected", "orphan_subtitles", f"no media named {stem_name}.* beside it")
    elif kind == "stem":
        head = _split(base)[0].rsplit("/", 1)[-1]
        r.row(path, "rejected", "lone_stem", f"no movie named {head}.* beside it")
    elif name.lower() == "metadata.csv":
        if path in r.csv_problems:
            r.row(path, "rejected", "unreadable", r.csv_problems[path])
        elif path in r.used_csvs:
            r.row(path, "accepted", "sidecar", "speech-corpus transcripts")
        else:
            r.row(path, "rejected", "ignored_sidecar", "no row names an audio file beside it")
    elif kind == "sidecar":
        r.row(path, "rejected", "ignored_sidecar", f"no media named {stem_name}.* for this file")
    elif not r.entries[path].regular:
        r.row(path, "rejected", "not_media", "not a regular file")
    else:
        r.row(path, "rejected", "not_media", f"{ext or 'no'} extension: not a media type")


def _classify(r: _Root) -> None:
    for path in sorted(r.entries):
        entry = r.entries[path]
        r.out.listed.append(r.uri(path))
        if entry.problem:
            r.row(path, "rejected", *entry.problem)
            continue
        kind = _kind(path)
        if kind in ("video", "audio") or kind == "unknown" and entry.regular:
            _media_input(r, path, kind)
    for path in sorted(r.entries):
        if path not in r.claimed:
            _leftover(r, path)


def discover(roots: list[str]) -> Discovery:
    """Every input and every other file under `roots`; inputs sorted by URI."""
    out = Discovery()
    for root in roots:
        _classify(_Root(root, out))
    out.inputs.sort(key=lambda i: i.uri)
    return out
