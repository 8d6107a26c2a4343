"""Heap growth of a running agent, for leak hunting (bench/soak.py ``--trace``).

With ``SDL_TRACEMALLOC=DIR`` in its environment, ``sdl-agent run`` starts
:mod:`tracemalloc` (``SDL_TRACEMALLOC_FRAMES`` frames, default 8) and takes a
heap snapshot every ``SDL_TRACEMALLOC_EVERY_S`` seconds (default 60) and once
at the end. The first, one period in (so choose a period past the warm-up),
is the baseline; each later one writes ``DIR/growth-NNN.txt``: the allocation
sites that grew most since the baseline, by line and by traceback. Plain
text, compared in the agent's own process: no snapshot is written or loaded
(tracemalloc's own file format would be unsafe to load). Off (and free) when
the variable is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

__all__ = ["ENV", "growth", "traced"]

ENV = "SDL_TRACEMALLOC"  # not SDL_AGENT_*: those override the campaign file
T = TypeVar("T")


async def traced(work: Awaitable[T]) -> T:
    """Await ``work``; under ``SDL_TRACEMALLOC`` report the heap's growth meanwhile."""
    where = os.environ.get(ENV)
    if not where:
        return await work
    out = Path(where)
    os.makedirs(out, exist_ok=True)  # once, before the campaign starts
    every = float(os.environ.get(f"{ENV}_EVERY_S", "60"))
    tracemalloc.start(int(os.environ.get(f"{ENV}_FRAMES", "8")))
    baseline: tracemalloc.Snapshot | None = None
    n = 0

    def snap() -> None:
        nonlocal baseline, n
        now = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        if baseline is None:
            baseline = now
            return
        text = (
            f"by line:\n{growth(baseline, now, 'lineno', 25)}\n"
            f"by traceback:\n{growth(baseline, now, 'traceback', 12)}\n"
        )
        (out / f"growth-{n:03d}.txt").write_text(text)
        n += 1

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            snap()

    task = asyncio.get_running_loop().create_task(loop())
    try:
        return await work
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        snap()
        tracemalloc.stop()


def growth(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, key: str = "traceback", top: int = 15
) -> str:
    """The ``top`` allocation sites that grew most from ``before`` to ``after``."""
    lines = []
    for st in after.compare_to(before, key)[:top]:
        lines.append(f"{st.size_diff / 1024:+10.1f} kB {st.count_diff:+8d} blocks")
        frames = st.traceback.format(limit=4 if key == "traceback" else 1)
        lines += [f"    {f.strip()}" for f in frames if f.strip()]
    return "\n".join(lines)
