"""Structured logging for driver processes: JSON lines on stderr.

Configured once, at the entry point (:func:`drivers.cli.main`), never on import.
Context (``source``, ``role``, later ``campaign``) is bound with
``structlog.contextvars`` so every record of the process carries it.

>>> configure_logging("info", source="pump", role="pump")  # doctest: +SKIP
>>> structlog.get_logger("drivers").info("setpoint_applied", cmd_id="c1")  # doctest: +SKIP
{"source": "pump", "role": "pump", "cmd_id": "c1", "event": "setpoint_applied", ...}
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["LEVELS", "configure_logging"]

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(
    level: str = "info", *, source: str, role: str, stream: TextIO | None = None
) -> None:
    """Send every structlog record of this process to ``stream`` as one JSON line.

    Args:
        level: lowest level written (``debug``, ``info``, ``warning``, ``error``).
        source: the driver's name on the wire, bound to every record.
        role: the driver's role, bound to every record.
        stream: where the lines go; stderr by default.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(source=source, role=role)
