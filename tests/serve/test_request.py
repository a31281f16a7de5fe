"""The strict form reader and the /v1/dub field checks, without a server: every refusal has its
status and names its field; uploads land in the request folder under the field's name."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dubforge.serve.forms import FormError, FormLimits, read_form
from dubforge.serve.request import FILE_FIELDS, TEXT_FIELDS, RequestError, parse

LIMITS = FormLimits(
    text_fields=TEXT_FIELDS,
    file_fields=FILE_FIELDS,
    max_field_bytes=4000,
    max_file_bytes=10_000,
    max_body_bytes=30_000,
)
BOUNDARY = "xXbOuNdArYx"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def body(*parts: tuple[str, bytes, str | None], end: bool = True) -> bytes:
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def read(data: bytes, folder: Path, content_type: str = CT, chunk: int = 7):
    async def stream():
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]

    return asyncio.run(read_form(content_type, stream(), folder, LIMITS))


def test_fields_and_files_are_read_in_small_chunks(tmp_path):
    clip = bytes(range(256)) * 20
    form = read(
        body(("text", "Ça va, Zoë?".encode(), None), ("video", clip, "../../etc/passwd")), tmp_path
    )
    assert form.fields == {"text": "Ça va, Zoë?"}
    assert form.files["video"] == tmp_path / "upload-video"  # the client's filename is ignored
    assert form.files["video"].read_bytes() == clip and form.sizes["video"] == len(clip)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "field"),
    [
        (body(("text", b"\xff\xfe bad", None)), CT, 422, "text"),
        (body(("text", b"a", None), ("text", b"b", None)), CT, 400, "text"),
        (body(("video", b"0" * 10_001, "v.mp4")), CT, 413, "video"),
        (body(("text", b"x" * 4001, None)), CT, 413, "text"),
        (
            body(
                ("video", b"0" * 9000, "a"),
                ("reference", b"0" * 9000, "b"),
                ("text", b"y" * 3999, None),
                ("labels", b"z" * 3999, None),
                ("guidance", b"q" * 3999, None),
                ("seed", b"1" * 3999, None),
            ),
            CT,
            413,
            "",
        ),
        (body(("nope", b"1", None)), CT, 400, "nope"),
        (body(("text", b"a", None), end=False), CT, 400, ""),
        (b"garbage without boundaries", CT, 400, ""),
        (body(("text", b"a", None)), "application/json", 415, ""),
        (body(("text", b"a", None)), "multipart/form-data", 400, ""),
    ],
    ids=[
        "not-utf8",
        "duplicate",
        "big-file",
        "big-field",
        "big-body",
        "unknown",
        "truncated",
        "garbage",
        "json",
        "no-boundary",
    ],
)
def test_bad_bodies_are_refused_with_status_and_field(tmp_path, data, content_type, status, field):
    with pytest.raises(FormError) as e:
        read(data, tmp_path, content_type)
    assert (e.value.status, e.value.field) == (status, field)


def _parse(fields: dict[str, str], files=frozenset({"video"})):
    return parse(
        fields, set(files), max_text_chars=100, max_nfe=64, uri_prefixes=("s3://dailies/",)
    )


def test_a_good_request_is_typed():
    req = _parse(
        {
            "text": "  Hello\n  there ",
            "labels": json.dumps({"emotion": "happy"}),
            "guidance": json.dumps({"video": 2, "labels": 1.5, "text": 1}),
            "nfe": "16",
            "seed": "7",
            "format": "mp4",
        }
    )
    assert req.text == "Hello there" and req.labels == {"emotion": "happy"}
    assert req.guidance == (2.0, 1.5, 1.0) and req.nfe == 16 and req.seed == 7
    assert req.format == "mp4" and req.video_uri is None
    assert _parse({"text": "a", "guidance": "none"}).guidance == "none"
    assert _parse({"text": "a"}).guidance is None  # the export's defaults


@pytest.mark.parametrize(
    ("fields", "files", "status", "field"),
    [
        ({"text": "   "}, {"video"}, 422, "text"),
        ({"text": "a" * 101}, {"video"}, 422, "text"),
        ({"text": "a\x00b"}, {"video"}, 422, "text"),
        ({}, {"video"}, 400, "text"),
        ({"text": "a"}, set(), 400, "video"),
        ({"text": "a", "video_uri": "s3://dailies/a.mp4"}, {"video"}, 400, "video"),
        ({"text": "a", "nfe": "0"}, {"video"}, 422, "nfe"),
        ({"text": "a", "nfe": "65"}, {"video"}, 422, "nfe"),
        ({"text": "a", "nfe": "NaN"}, {"video"}, 400, "nfe"),
        ({"text": "a", "nfe": "1e9"}, {"video"}, 400, "nfe"),
        ({"text": "a", "seed": "-1"}, {"video"}, 422, "seed"),
        ({"text": "a", "nfe": "\u0663"}, {"video"}, 400, "nfe"),  # an Arabic-Indic 3
        ({"text": "a", "nfe": "1_6"}, {"video"}, 400, "nfe"),
        ({"text": "a", "sway": "1_0"}, {"video"}, 400, "sway"),
        ({"text": "a", "sway": "nan"}, {"video"}, 400, "sway"),
        (
            {"text": "a", "guidance": '{"video": NaN, "labels": 1, "text": 1}'},
            {"video"},
            400,
            "guidance",
        ),
        (
            {"text": "a", "guidance": '{"video": -1, "labels": 1, "text": 1}'},
            {"video"},
            422,
            "guidance",
        ),
        (
            {"text": "a", "guidance": '{"video": 1e300, "labels": 1, "text": 1}'},
            {"video"},
            422,
            "guidance",
        ),
        (
            {"text": "a", "guidance": '{"video": true, "labels": 1, "text": 1}'},
            {"video"},
            422,
            "guidance",
        ),
        ({"text": "a", "guidance": "[1, 2, 3]"}, {"video"}, 422, "guidance"),
        ({"text": "a", "guidance": "[" * 5000}, {"video"}, 400, "guidance"),
        ({"text": "a", "labels": '{"mood": "x"}'}, {"video"}, 422, "labels"),
        ({"text": "a", "labels": '{"emotion": 3}'}, {"video"}, 422, "labels"),
        ({"text": "a", "format": "avi"}, {"video"}, 422, "format"),
        ({"text": "a", "method": "rk4"}, {"video"}, 422, "method"),
        ({"text": "a", "video_uri": "/etc/passwd"}, set(), 400, "video_uri"),
        ({"text": "a", "video_uri": "file:///etc/passwd"}, set(), 400, "video_uri"),
        ({"text": "a", "video_uri": "s3://dailies/../secret/x.mp4"}, set(), 400, "video_uri"),
        ({"text": "a", "video_uri": "s3://other/x.mp4"}, set(), 400, "video_uri"),
        ({"text": "a", "reference_uri": "C:\\x.wav"}, {"video"}, 400, "reference_uri"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields, files, status, field):
    with pytest.raises(RequestError) as e:
        _parse(fields, files)
    assert (e.value.status, e.value.field) == (status, field), e.value.detail


def test_an_allow_listed_uri_is_accepted():
    req = _parse({"text": "a", "video_uri": "s3://dailies/reel1/a.mp4"}, set())
    assert req.video_uri == "s3://dailies/reel1/a.mp4"
