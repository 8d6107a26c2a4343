"""Per-source sequence numbers: gaps, duplicates and restarts.

Each source numbers the messages it sends on one socket 0, 1, 2, ...; a new
``session`` (announced in its hello) starts again at 0. For each message:

- ``seq == last + 1``: in order;
- ``seq > last + 1``: a gap of ``seq - last - 1`` lost messages (counted, logged),
  the message itself is accepted;
- ``seq <= last`` and one of the gap's missing numbers (the last
  :data:`LATE_WINDOW` of them are remembered): it was not lost but overtaken
  (reordered on the way); accepted once, as ``late``;
- any other ``seq <= last``: a duplicate or a replay; rejected.

>>> t = SequenceTracker()
>>> t.observe("pump", 0).status, t.observe("pump", 3).missing, t.observe("pump", 3).status
('ok', 2, 'duplicate')
>>> t.observe("pump", 1).status, t.observe("pump", 1).status
('late', 'duplicate')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATE_WINDOW", "SeqVerdict", "SequenceTracker"]

#: how many of the most recent missing numbers of a source may still arrive late
LATE_WINDOW = 256


@dataclass(frozen=True)
class SeqVerdict:
    """``status`` is ``ok``, ``gap`` (accepted, ``missing`` lost before it),
    ``late`` (accepted: one of a gap's missing numbers after all) or
    ``duplicate`` (rejected)."""

    status: str
    missing: int = 0

    @property
    def accepted(self) -> bool:
        return self.status != "duplicate"


class SequenceTracker:
    """Tracks the last sequence number of each (source, stream)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._missing: dict[str, set[int]] = {}
        self.gaps = 0
        self.missing = 0
        self.duplicates = 0
        self.late = 0

    def reset(self, source: str) -> None:
        """Forget ``source`` (it restarted: a new session begins at 0)."""
        self._last.pop(source, None)
        self._missing.pop(source, None)

    def observe(self, source: str, seq: int) -> SeqVerdict:
        last = self._last.get(source)
        if last is None or seq == last + 1:
            self._last[source] = seq
            return _OK
        if seq <= last:
            holes = self._missing.get(source)
            if holes is not None and seq in holes:
                holes.discard(seq)
                self.late += 1
                return _LATE
            self.duplicates += 1
            return _DUPLICATE
        missing = seq - last - 1
        self._last[source] = seq
        holes = self._missing.setdefault(source, set())
        holes.update(range(max(last + 1, seq - LATE_WINDOW), seq))
        if len(holes) > LATE_WINDOW:
            for old in sorted(holes)[: len(holes) - LATE_WINDOW]:
                holes.discard(old)
        self.gaps += 1
        self.missing += missing
        return SeqVerdict("gap", missing)


_OK = SeqVerdict("ok")
_DUPLICATE = SeqVerdict("duplicate")
_LATE = SeqVerdict("late")
