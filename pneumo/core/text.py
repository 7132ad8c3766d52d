"""Outside text (a DICOM field, a server's answer, a file name) made safe to print on a terminal."""

from __future__ import annotations

import re
from typing import Any

# What a terminal would act on rather than show: C0 controls (ESC among them, and the line breaks that would
# let a field forge a line of its own), DEL, C1 controls (U+009B is a one-character CSI), the Unicode line and
# paragraph separators and the bidirectional overrides and isolates that reorder what follows them on screen.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

DEFAULT_LIMIT = 1000  # characters shown; a longer text is cut there, and its length said


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: Any, limit: int | None = DEFAULT_LIMIT) -> str:
    """text as one line that shows on a terminal as the characters it holds: every control character, ESC and
    bidirectional override written as an escape (ESC as \\x1b, a line break as \\n), and text longer than limit
    characters cut there with its length noted ("… [204800 characters]"). limit None keeps it whole.

    The cut is made before escaping, so an escape is never split; the note says the original length."""
    value = text if isinstance(text, str) else str(text)
    cut = limit is not None and len(value) > limit
    shown = value[: max(limit or 0, 0)] if cut else value
    safe = _UNSAFE.sub(_escape, shown)
    return f"{safe}… [{len(value)} characters]" if cut else safe
