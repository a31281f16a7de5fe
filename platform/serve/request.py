"""`POST /v1/dub` fields, checked one by one into a typed request; every refusal names its field.

Fields (multipart/form-data): `video` (file) or `video_uri`; `text`; optional `reference` (file)
or `reference_uri`, `reference_text`, `labels` (JSON object of scene_type/gender/age/emotion),
`guidance` (JSON {video, labels, text}, or "none"), `nfe`, `method`, `sway`, `seed`, `format`
(wav | mp4). A URI must start with one of the configured allow-listed prefixes: no request names
a path on the server.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from dubforge.schema import LABEL_FIELDS

TEXT_FIELDS = frozenset(
    {
        "text",
        "reference_text",
        "labels",
        "guidance",
        "nfe",
        "method",
        "sway",
        "seed",
        "format",
        "video_uri",
        "reference_uri",
    }
)
FILE_FIELDS = frozenset({"video", "reference"})
MAX_SEED = 2**31 - 1
GUIDANCE_MAX = 20.0
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class RequestError(ValueError):
    """A field that cannot be used: `status` (400 malformed, 422 out of range), `field`, and
    a `detail` sentence safe to show to the client."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.field, self.detail = status, field, detail


@dataclass(frozen=True)
class DubRequest:
    text: str
    reference_text: str
    labels: dict[str, str]
    guidance: tuple[float, float, float] | Literal["none"] | None  # None: the export's
    nfe: int | None
    method: Literal["euler", "midpoint"] | None
    sway: float | None
    seed: int
    format: Literal["wav", "mp4"]
    video_uri: str | None
    reference_uri: str | None


def _text(value: str, name: str, max_chars: int, required: bool) -> str:
    if _CONTROL.search(value):
        raise RequestError(422, name, f"{name} holds control characters")
    text = " ".join(value.split())
    if required and not text:
        raise RequestError(422, name, f"{name} is empty")
    if len(text) > max_chars:
        raise RequestError(422, name, f"{name} has {len(text)} characters; at most {max_chars}")
    return text


_INT = re.compile(r"[+-]?[0-9]{1,12}", re.ASCII)
_FLOAT = re.compile(
    r"[+-]?([0-9]{1,12}(\.[0-9]{0,12})?|\.[0-9]{1,12})([eE][+-]?[0-9]{1,3})?", re.ASCII
)


def _number(raw: str, name: str, kind: type, lo: float, hi: float) -> Any:
    """An int or float written in plain ASCII digits (no underscores, other scripts' digits,
    hex, nan or inf) within [lo, hi]."""
    pattern = _INT if kind is int else _FLOAT
    try:
        if not pattern.fullmatch(raw.strip()):
            raise ValueError(raw)
        value = kind(raw.strip())
    except ValueError:
        raise RequestError(
            400, name, f"{name} must be a {kind.__name__}, got {raw[:40]!r}"
        ) from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(422, name, f"{name}={raw[:40]} is outside [{lo:g}, {hi:g}]")
    return value


def _json(raw: str, name: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise RequestError(400, name, f"{name} must be a JSON object") from None


def _no_constant(token: str) -> None:
    raise ValueError(f"{token} is not a number")


def _labels(raw: str) -> dict[str, str]:
    data = _json(raw, "labels")
    if not isinstance(data, dict):
        raise RequestError(400, "labels", "labels must be a JSON object")
    unknown = sorted(set(data) - set(LABEL_FIELDS))
    if unknown:
        raise RequestError(
            422, "labels", f"unknown labels {unknown[:4]}; known: {list(LABEL_FIELDS)}"
        )
    out = {}
    for key, value in data.items():
        if not isinstance(value, str) or not 0 < len(value) <= 32 or _CONTROL.search(value):
            raise RequestError(422, "labels", f"label {key} must be a short string")
        out[key] = value
    return out


def _guidance(raw: str) -> tuple[float, float, float] | Literal["none"]:
    if raw.strip() == "none":
        return "none"
    data = _json(raw, "guidance")
    if not isinstance(data, dict) or set(data) != {"video", "labels", "text"}:
        raise RequestError(
            422, "guidance", 'guidance must be {"video": x, "labels": y, "text": z} or "none"'
        )
    scales = []
    for key in ("video", "labels", "text"):
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise RequestError(422, "guidance", f"guidance.{key} must be a number")
        if not math.isfinite(v) or not 0 <= v <= GUIDANCE_MAX:
            raise RequestError(
                422, "guidance", f"guidance.{key}={v} is outside [0, {GUIDANCE_MAX:g}]"
            )
        scales.append(float(v))
    return (scales[0], scales[1], scales[2])


def allowed_uri(uri: str, prefixes: tuple[str, ...], name: str) -> str:
    """`uri` when it is a storage URI under one of `prefixes`; a plain path, a `..` segment or
    any other URI is refused."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a path, or a Windows drive letter
        raise RequestError(
            400, name, f"{name} must be a storage URI; server paths are not accepted"
        )
    if any(seg in ("..", ".") for seg in unquote(parts.path).split("/")) or "\\" in uri:
        raise RequestError(400, name, f"{name} may not hold . or .. segments")
    if not any(uri.startswith(p) for p in prefixes if p):
        raise RequestError(400, name, f"{name} is not under an allow-listed prefix")
    return uri


def parse(
    fields: dict[str, str],
    files: set[str],
    *,
    max_text_chars: int,
    max_nfe: int,
    uri_prefixes: tuple[str, ...],
) -> DubRequest:
    """The typed request from a parsed form's text `fields` and the names of its `files`."""
    has_video = "video" in files
    if has_video == ("video_uri" in fields):
        raise RequestError(400, "video", "send exactly one of video (an upload) or video_uri")
    if "reference" in files and "reference_uri" in fields:
        raise RequestError(400, "reference", "send reference or reference_uri, not both")
    if "text" not in fields:
        raise RequestError(400, "text", "text is required")
    fmt = fields.get("format", "wav").strip()
    if fmt not in ("wav", "mp4"):
        raise RequestError(422, "format", f"format must be wav or mp4, got {fmt[:20]!r}")
    method = fields.get("method")
    if method is not None and method.strip() not in ("euler", "midpoint"):
        raise RequestError(422, "method", "method must be euler or midpoint")
    return DubRequest(
        text=_text(fields["text"], "text", max_text_chars, required=True),
        reference_text=_text(
            fields.get("reference_text", ""), "reference_text", max_text_chars, False
        ),
        labels=_labels(fields["labels"]) if "labels" in fields else {},
        guidance=_guidance(fields["guidance"]) if "guidance" in fields else None,
        nfe=_number(fields["nfe"], "nfe", int, 1, max_nfe) if "nfe" in fields else None,
        method=method.strip() if method is not None else None,  # type: ignore[arg-type]
        sway=_number(fields["sway"], "sway", float, -1, 1) if "sway" in fields else None,
        seed=_number(fields["seed"], "seed", int, 0, MAX_SEED) if "seed" in fields else 0,
        format=fmt,  # type: ignore[arg-type]
        video_uri=allowed_uri(fields["video_uri"], uri_prefixes, "video_uri")
        if "video_uri" in fields
        else None,
        reference_uri=allowed_uri(fields["reference_uri"], uri_prefixes, "reference_uri")
        if "reference_uri" in fields
        else None,
    )
