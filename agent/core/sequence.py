"""Per-source sequence numbers: gaps, duplicates and restarts.

Each source numbers the messages it sends on one socket 0, 1, 2, ...; a new
``session`` (announced in its hello) starts again at 0. For each message:

- ``seq == last + 1``: in order;
- ``seq > last + 1``: a gap of ``seq - last - 1`` lost messages (counted, logged),
  the message itself is accepted;
- ``seq <= last``: a duplicate or a replay; rejected.

>>> t = SequenceTracker()
>>> t.observe("pump", 0).status, t.observe("pump", 3).missing, t.observe("pump", 3).status
('ok', 2, 'duplicate')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SeqVerdict", "SequenceTracker"]


@dataclass(frozen=True)
class SeqVerdict:
    """``status`` is ``ok``, ``gap`` (accepted, ``missing`` lost before it) or
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
        self.gaps = 0
        self.missing = 0
        self.duplicates = 0

    def reset(self, source: str) -> None:
        """Forget ``source`` (it restarted: a new session begins at 0)."""
        self._last.pop(source, None)

    def observe(self, source: str, seq: int) -> SeqVerdict:
        last = self._last.get(source)
        if last is None or seq == last + 1:
            self._last[source] = seq
            return _OK
        if seq <= last:
            self.duplicates += 1
            return _DUPLICATE
        missing = seq - last - 1
        self._last[source] = seq
        self.gaps += 1
        self.missing += missing
        return SeqVerdict("gap", missing)


_OK = SeqVerdict("ok")
_DUPLICATE = SeqVerdict("duplicate")
