"""agent.memtrace: heap snapshots of a run, only when asked for."""

from __future__ import annotations

import asyncio

from agent import memtrace


async def _grow(keep: list[bytes]) -> int:
    await asyncio.sleep(0.05)
    keep.append(b"x" * 200_000)
    return 7


def test_snapshots_are_written_only_under_the_variable_and_show_what_grew(tmp_path, monkeypatch):
    monkeypatch.delenv(memtrace.ENV, raising=False)
    assert asyncio.run(memtrace.traced(_grow([]))) == 7
    assert list(tmp_path.iterdir()) == []  # off: nothing written
    monkeypatch.setenv(memtrace.ENV, str(tmp_path / "trace"))
    monkeypatch.setenv(f"{memtrace.ENV}_EVERY_S", "0.01")
    keep: list[bytes] = []
    assert asyncio.run(memtrace.traced(_grow(keep))) == 7
    snaps = sorted((tmp_path / "trace").glob("snap-*.pickle"))
    assert len(snaps) >= 2
    assert "test_memtrace.py" in memtrace.compare(snaps[0], snaps[-1], "lineno", 3)
