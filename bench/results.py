"""bench/RESULTS.md: each benchmark owns one section between its markers."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = "# Benchmark results\n\nWhat was measured, how, and on what.\n\n"


def write_section(name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in
    RESULTS.md (appended when the markers are missing); other sections untouched."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text}{end}\n"
    current = RESULTS.read_text() if RESULTS.exists() else _HEADER
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        _, tail = rest.split(end, 1)
        tail = tail.lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")
    else:
        new = current.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(new)
