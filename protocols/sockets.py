"""Socket conventions shared by the agent and the drivers.

The agent binds three endpoints on consecutive ports of one base address:

==========  =====  ====================  =========================================
endpoint    port   agent socket          peer socket
==========  =====  ====================  =========================================
commands    P      ROUTER (bind)         driver DEALER (connect, identity=source)
events      P + 1  SUB (bind)            driver PUB (connect)
status      P + 2  PUB (bind)            monitor SUB (connect)
==========  =====  ====================  =========================================

Every socket gets ``linger`` and a maximum message size.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq

from protocols.codec import DEFAULT_MAX_BYTES

__all__ = ["DEFAULT_BASE", "Endpoints", "configure", "is_loopback"]

DEFAULT_BASE = "tcp://127.0.0.1:5560"
LINGER_MS = 0


@dataclass(frozen=True)
class Endpoints:
    """The agent's three endpoints, derived from the commands endpoint."""

    commands: str
    events: str
    status: str

    @classmethod
    def from_base(cls, base: str) -> Endpoints:
        """``tcp://host:P`` -> commands P, events P+1, status P+2.

        >>> Endpoints.from_base("tcp://127.0.0.1:6000").events
        'tcp://127.0.0.1:6001'
        """
        parts = urlsplit(base)
        if parts.scheme != "tcp" or parts.port is None or parts.hostname is None:
            raise ValueError(f"endpoint must look like tcp://HOST:PORT, got {base!r}")
        host = parts.hostname
        if ":" in host:  # IPv6
            host = f"[{host}]"
        port = parts.port
        return cls(
            commands=f"tcp://{host}:{port}",
            events=f"tcp://{host}:{port + 1}",
            status=f"tcp://{host}:{port + 2}",
        )


def configure(sock: zmq.Socket, *, max_bytes: int = DEFAULT_MAX_BYTES) -> zmq.Socket:
    """Set linger and the maximum message size on ``sock``; return it."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    return sock


def is_loopback(endpoint: str) -> bool:
    """True for tcp endpoints on 127.0.0.0/8, ::1 or localhost, and ipc/inproc."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = parts.hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"
