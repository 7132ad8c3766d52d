"""The bodies DICOMweb exchanges, apart from how they travel: DICOM JSON arrays read item by item as their bytes
arrive, the first part of a multipart/related answer, a STOW-RS request built as multipart/related, and a STOW
answer's failure reasons in words."""

from __future__ import annotations

import codecs
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from pneumo.integrations.pacs.transport import CHUNK_BYTES


def json_items(chunks: Iterator[bytes], max_items: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """The objects of a JSON array read as its bytes arrive, and whether more followed: reading stops after
    max_items, so a server that ignores a search's limit is cut off here rather than read to its end.

    ValueError when the answer is not an array of objects (a DICOM JSON answer is one); RecursionError for
    nesting deeper than the parser goes. An item is parsed again only once its unread part has doubled, so an
    item arriving in many chunks costs linear time."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    text, pos = "", 0
    items: list[dict[str, Any]] = []

    def more() -> bool:
        nonlocal text, pos
        chunk = next(chunks, None)
        if pos > 2**20:  # drop what is parsed
            text, pos = text[pos:], 0
        text += utf8.decode(chunk or b"", final=chunk is None)
        return chunk is not None

    def next_char() -> str | None:
        nonlocal pos
        while True:
            while pos < len(text) and text[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(text):
                return text[pos]
            if not more():
                return None

    if next_char() != "[":
        raise ValueError("the answer is not a JSON array")
    pos += 1
    while True:
        found = next_char()
        if found == "]":
            return items, False
        if items:
            if found != ",":
                raise ValueError(f"the JSON array is broken after item {len(items)}")
            pos += 1
            found = next_char()
        if found is None:
            raise ValueError("the answer ends inside its JSON array")
        if max_items is not None and len(items) >= max_items:
            return items, True
        while True:
            try:
                value, pos = decoder.raw_decode(text, pos)
                break
            except json.JSONDecodeError:
                unread = len(text) - pos
                ended = False
                while len(text) - pos < max(2 * unread, unread + CHUNK_BYTES):
                    if not more():
                        ended = True
                        break
                if ended and len(text) - pos == unread:
                    raise ValueError(f"item {len(items) + 1} of the JSON array is not valid JSON") from None
        if not isinstance(value, dict):
            raise ValueError(f"item {len(items) + 1} of the answer is not a DICOM JSON object ({type(value).__name__})")
        items.append(value)


def stow_body(datasets: Sequence[Any]) -> tuple[bytes, str]:
    """A STOW-RS request body (multipart/related of application/dicom parts) and its Content-Type."""
    import io

    import pydicom

    boundary = uuid.uuid4().hex
    parts = []
    for ds in datasets:
        with io.BytesIO() as out:
            pydicom.dcmwrite(out, ds)
            parts.append(b"\r\n--%s\r\nContent-Type: application/dicom\r\n\r\n%s" % (boundary.encode(), out.getvalue()))
    body = b"".join(parts) + b"\r\n--%s--" % boundary.encode()
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'


# A STOW-RS answer's FailureReason codes (DICOM storage status codes), in words.
FAILURE_REASONS = {
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class or study",
    0xC000: "cannot understand",
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA770: "out of resources",
    0xC122: "SOP class not supported",
    0xB000: "coercion of data elements",
}


def failure_reasons(failed: Sequence[Any]) -> str:
    """The distinct failure reasons of a STOW answer's FailedSOPSequence items, each code with its words."""
    codes = sorted({int(getattr(f, "FailureReason", 0) or 0) for f in failed})
    return "; ".join(
        f"failure reason 0x{c:04X}" + (f" {FAILURE_REASONS[c]}" if c in FAILURE_REASONS else "") for c in codes
    )


def stow_failure_detail(content: bytes) -> str:
    """A refused STOW's DICOM JSON answer as its failure reasons (" (failure reason 0x…)"); "" when the body is
    not such an answer."""
    try:
        from pydicom import Dataset

        failed = list(getattr(Dataset.from_json(json.loads(content)), "FailedSOPSequence", None) or [])
    except Exception:  # not DICOM JSON: the transport shows the text
        return ""
    return f" ({failure_reasons(failed)})" if failed else ""


def first_part(content_type: str, body: bytes) -> bytes:
    """The first body of a multipart/related answer (sliced once, not split: an instance may be large); a
    single-part application/dicom answer is itself."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        return body
    delimiter = b"--" + found.group(1).encode()
    start = body.find(delimiter)
    if start < 0 or body.startswith(b"--", start + len(delimiter)):
        return b""
    head_end = body.find(b"\r\n\r\n", start + len(delimiter))
    if head_end < 0:
        return b""
    begin = head_end + 4
    end = body.find(b"\r\n" + delimiter, begin)
    return body[begin : end if end >= 0 else len(body)]
