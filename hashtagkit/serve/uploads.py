"""Reading a multipart upload ourselves, into memory, counted as it arrives: Starlette's form
parser spools each file above 1 MiB to a temporary file on disk, and reads the whole body before
anyone can refuse it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FILES = 256  # photos in one request: beyond this a client should send several requests
MAX_NAME = 255  # characters of a file name echoed back


@dataclass
class Upload:
    name: str
    data: bytearray


class UploadReader:
    """python-multipart callbacks that keep the parts named `files` in memory (other fields are
    counted against the limit and dropped)."""

    def __init__(self):
        self.uploads: list[Upload] = []
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.current: Upload | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished}

    def on_part_begin(self) -> None:
        self.current, self.disposition = None, b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if options.get(b"name") != b"files":
            return
        if len(self.uploads) >= MAX_FILES:
            raise HTTPException(400, f"too many files in one request (limit {MAX_FILES}); send several requests")
        if b"filename" not in options:  # a form field, not a file: the schema's `files` are files
            raise HTTPException(400, "each part named 'files' must be a file upload (a filename in its "
                                     "Content-Disposition), not a form field")
        filename = options[b"filename"].decode("utf-8", "replace")[:MAX_NAME]
        self.current = Upload(filename or f"upload {len(self.uploads) + 1}", bytearray())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.data += data[start:end]

    def on_part_end(self) -> None:
        if self.current is not None:
            self.uploads.append(self.current)
        self.current = None


async def read_uploads(request: Request, limit: int) -> list[Upload]:
    """The `files` parts of a multipart body, read from the stream into memory, at most `limit`
    bytes of body: a larger Content-Length is refused before reading, a longer stream at the byte
    that crosses the limit."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise HTTPException(415, "send the photos as multipart/form-data, one part named 'files' per photo")
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "the multipart Content-Type has no boundary")
    too_large = HTTPException(413, f"upload larger than the server's limit of {limit / 2**20:g} MiB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    reader = UploadReader()
    parser = MultipartParser(boundary, reader.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise HTTPException(400, f"malformed multipart body ({e})") from None
    return reader.uploads
