"""Outside text made safe for a terminal: controls escaped, long names cut with their length, and the command line's
error line and the PACS output using it."""

from __future__ import annotations

import pytest

from pneumo.core.text import terminal_safe


def test_plain_text_is_unchanged() -> None:
    assert (
        terminal_safe("study 1.2.3: PNEUMONIA  p=0.9731 — Zürich 東京")
        == "study 1.2.3: PNEUMONIA  p=0.9731 — Zürich 東京"
    )
    assert terminal_safe(42) == "42" and terminal_safe(None) == "None"


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # ESC: clear screen, cursor home
        ("a\r\nstudy 9: NORMAL", "a\\r\\nstudy 9: NORMAL"),  # a forged line of its own
        ("tab\there", "tab\\there"),
        ("\x00\x07\x08\x7f", "\\x00\\x07\\x08\\x7f"),  # NUL, bell, backspace, DEL
        ("\x9b31m\x85", "\\x9b31m\\x85"),  # C1: a one-character CSI, next line
        ("left\u202eright\u2066x\u2069", "left\\u202eright\\u2066x\\u2069"),  # bidirectional override, isolate
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_controls_are_escaped(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown


def test_long_text_is_cut_with_its_length() -> None:
    name = "x" * 200_000
    shown = terminal_safe(name, limit=80)
    assert shown == "x" * 80 + "… [200000 characters]"
    assert terminal_safe(name).endswith("… [200000 characters]") and len(terminal_safe(name)) < 1100
    # Cut before escaping: an escape is never split, and the length said is the original's.
    assert terminal_safe("\x1b" * 10, limit=3) == "\\x1b\\x1b\\x1b… [10 characters]"
    assert terminal_safe(name, limit=None) == name


def test_main_error_line_is_escaped_and_cut(capsys: pytest.CaptureFixture[str]) -> None:
    from pneumo.cli import main

    assert main(["pacs", "screen", "--url", "\x1b[2Jftp://pacs/\r\nforged", "--study", "1.2.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "\x1b" not in err and "\r" not in err and err.count("\n") == 1
    assert "\\x1b[2J" in err and "\\r\\nforged" in err
    assert main(["pacs", "screen", "--url", "http://127.0.0.1:9/dw", "--since", "2" * 200_000]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 1200 and "characters]" in err
