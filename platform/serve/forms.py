"""multipart/form-data read strictly, for an API that faces the internet.

Starlette's form parser decodes a field that is not UTF-8 as Latin-1 without a word, lets a
repeated field pass, and keeps file parts in spooled temp files of its choosing. This one streams
the body once through python-multipart: file parts go to files in the request's private folder
(named by the field, never by the client's filename), text fields stay bytes until decoded as
strict UTF-8, and every limit (fields, files, sizes, total body) is checked as the bytes arrive,
so an oversized upload is refused before it is read to its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class FormError(ValueError):
    """A request body that cannot be used: `status` (400 malformed, 413 too large, 415 not a
    form), `field` (the form field at fault, "" for the whole body) and a `detail` sentence."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.field, self.detail = status, field, detail


@dataclass
class Form:
    """The parsed form: text fields (decoded) and file fields (paths in the request folder)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FormLimits:
    text_fields: frozenset[str]
    file_fields: frozenset[str]
    max_field_bytes: int
    max_file_bytes: int
    max_body_bytes: int


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    out: BinaryIO | None = None
    size: int = 0


async def read_form(
    content_type: str, body: AsyncIterator[bytes], folder: Path, limits: FormLimits
) -> Form:
    """Parse a multipart body arriving in chunks into `folder` (which must exist and be private
    to the request). Raises FormError; a partly written file is left for the caller's cleanup
    of `folder`."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1")[:80] or "none"
        raise FormError(415, "", f"send multipart/form-data, not {shown}")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise FormError(400, "", "the multipart content type has no usable boundary")
    form = Form()
    state = _Parser(form, folder, limits)
    parser = MultipartParser(boundary, state.callbacks())
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            if total > limits.max_body_bytes:
                raise FormError(
                    413, "", f"the request body is larger than {limits.max_body_bytes} bytes"
                )
            parser.write(chunk)
            state.raise_pending()
        parser.finalize()
        state.raise_pending()
    except FormParserError as e:
        raise FormError(
            400, state.current_name(), f"the multipart body is malformed ({e})"
        ) from None
    finally:
        state.close()
    if not state.ended:
        raise FormError(400, "", "the multipart body ended before its closing boundary")
    return form


class _Parser:
    """python-multipart callbacks that build a Form; errors are kept and raised between
    chunks (raising inside a callback would leave the parser half-way)."""

    def __init__(self, form: Form, folder: Path, limits: FormLimits) -> None:
        self.form, self.folder, self.limits = form, folder, limits
        self.part: _Part | None = None
        self.header_field, self.header_value = bytearray(), bytearray()
        self.headers: dict[str, bytes] = {}
        self.error: FormError | None = None
        self.ended = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def fail(self, status: int, name: str, detail: str) -> None:
        if self.error is None:
            self.error = FormError(status, name, detail)

    def raise_pending(self) -> None:
        if self.error is not None:
            raise self.error

    def current_name(self) -> str:
        return self.part.name if self.part is not None else ""

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]
        if len(self.header_value) > 4096:
            self.fail(400, "", "a multipart part header is longer than 4096 bytes")

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = bytes(self.header_value)
        self.header_field, self.header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        part = self.part
        assert part is not None
        disposition, options = parse_options_header(self.headers.get("content-disposition", b""))
        name_raw = options.get(b"name")
        if disposition != b"form-data" or name_raw is None:
            self.fail(400, "", "a multipart part has no form-data name")
            return
        try:
            part.name = name_raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(400, "", "a multipart field name is not UTF-8")
            return
        part.filename = options[b"filename"].decode("latin-1") if b"filename" in options else None
        name, lim = part.name, self.limits
        if name in self.form.fields or name in self.form.files:
            self.fail(400, name, f"field {name!r} is given more than once")
        elif name in lim.file_fields:
            path = self.folder / f"upload-{name}"
            part.out = open(path, "wb")  # noqa: SIM115 - closed in on_part_end / close
            self.form.files[name] = path
        elif name not in lim.text_fields:
            known = ", ".join(sorted(lim.text_fields | lim.file_fields))
            self.fail(400, name[:64], f"unknown field {name[:64]!r}; the fields are: {known}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        if part is None or self.error is not None:
            return
        chunk = data[start:end]
        part.size += len(chunk)
        if part.out is not None:
            if part.size > self.limits.max_file_bytes:
                mb = self.limits.max_file_bytes / 2**20
                self.fail(413, part.name, f"the {part.name} upload is larger than {mb:g} MB")
                return
            part.out.write(chunk)
        else:
            if part.size > self.limits.max_field_bytes:
                self.fail(
                    413,
                    part.name,
                    f"field {part.name!r} is longer than {self.limits.max_field_bytes} bytes",
                )
                return
            part.data += chunk

    def on_part_end(self) -> None:
        part = self.part
        if part is None or self.error is not None:
            self.close()
            return
        if part.out is not None:
            part.out.close()
            part.out = None
            self.form.sizes[part.name] = part.size
        else:
            try:
                self.form.fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(422, part.name, f"field {part.name!r} is not valid UTF-8 text")
        self.part = None

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.part is not None and self.part.out is not None:
            self.part.out.close()
            self.part.out = None
