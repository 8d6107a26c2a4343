"""Heap snapshots of a running agent, for leak hunting (bench/soak.py ``--trace``).

With ``SDL_TRACEMALLOC=DIR`` in its environment, ``sdl-agent run`` starts
:mod:`tracemalloc` (``SDL_TRACEMALLOC_FRAMES`` frames, default 8) and
writes a snapshot to ``DIR/snap-NNN.pickle`` every
``SDL_TRACEMALLOC_EVERY_S`` seconds (default 60) and once at the end.
Compare two with :func:`compare`. Off (and free) when the variable is unset.

The snapshots are :mod:`tracemalloc`'s own pickles: loading one runs code, so
load only snapshots this machine wrote; they never travel on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

__all__ = ["ENV", "compare", "traced"]

ENV = "SDL_TRACEMALLOC"  # not SDL_AGENT_*: those override the campaign file
T = TypeVar("T")


async def traced(work: Awaitable[T]) -> T:
    """Await ``work``; under ``SDL_TRACEMALLOC`` snapshot the heap meanwhile."""
    where = os.environ.get(ENV)
    if not where:
        return await work
    out = Path(where)
    os.makedirs(out, exist_ok=True)  # once, before the campaign starts
    every = float(os.environ.get(f"{ENV}_EVERY_S", "60"))
    tracemalloc.start(int(os.environ.get(f"{ENV}_FRAMES", "8")))
    n = 0

    def dump() -> None:
        nonlocal n
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        snap.dump(str(out / f"snap-{n:03d}.pickle"))
        n += 1

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            dump()

    task = asyncio.get_running_loop().create_task(loop())
    try:
        return await work
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        dump()
        tracemalloc.stop()


def compare(before: Path, after: Path, key: str = "traceback", top: int = 15) -> str:
    """The ``top`` allocation sites that grew most from ``before`` to ``after``."""
    a = tracemalloc.Snapshot.load(str(before))
    b = tracemalloc.Snapshot.load(str(after))
    lines = []
    for st in b.compare_to(a, key)[:top]:
        lines.append(f"{st.size_diff / 1024:+10.1f} kB {st.count_diff:+8d} blocks")
        frames = st.traceback.format(limit=4 if key == "traceback" else 1)
        lines += [f"    {f.strip()}" for f in frames if f.strip()]
    return "\n".join(lines)
