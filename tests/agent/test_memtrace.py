"""agent.memtrace: heap growth of a run, only when asked for."""

from __future__ import annotations

import asyncio

from agent import memtrace


async def _grow(keep: list[bytes]) -> int:
    await asyncio.sleep(0.05)
    keep.append(b"x" * 200_000)
    return 7


def test_growth_is_written_only_under_the_variable_and_shows_what_grew(tmp_path, monkeypatch):
    monkeypatch.delenv(memtrace.ENV, raising=False)
    assert asyncio.run(memtrace.traced(_grow([]))) == 7
    assert list(tmp_path.iterdir()) == []  # off: nothing written
    monkeypatch.setenv(memtrace.ENV, str(tmp_path / "trace"))
    monkeypatch.setenv(f"{memtrace.ENV}_EVERY_S", "0.01")
    keep: list[bytes] = []
    assert asyncio.run(memtrace.traced(_grow(keep))) == 7
    reports = sorted((tmp_path / "trace").glob("growth-*.txt"))
    assert reports and all(p.suffix == ".txt" for p in (tmp_path / "trace").iterdir())
    last = reports[-1].read_text()
    assert "test_memtrace.py" in last.split("by traceback:")[0]  # the 200 kB appended in _grow
