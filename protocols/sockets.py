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

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq

from protocols.codec import DEFAULT_MAX_BYTES

__all__ = ["DEFAULT_BASE", "Endpoints", "configure", "is_loopback"]

DEFAULT_BASE = "tcp://127.0.0.1:5560"
LINGER_MS = 0
_MAX_PORT = 65535


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
        try:
            port = parts.port
        except ValueError:  # not a number, or outside 0-65535
            port = None
        if (
            parts.scheme != "tcp"
            or port is None
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
        ):
            raise ValueError(f"endpoint must look like tcp://HOST:PORT, got {base!r}")
        if not 1 <= port <= _MAX_PORT - 2:
            raise ValueError(
                f"port must be in 1..{_MAX_PORT - 2} (the agent also uses the next two), "
                f"got {port} in {base!r}"
            )
        host = parts.hostname
        if ":" in host:  # IPv6
            host = f"[{host}]"
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
    if parts.scheme != "tcp":
        return False
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host name (DNS may send it anywhere), "*", or an interface
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
