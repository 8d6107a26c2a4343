"""Errors of the drivers package: one base, narrow subclasses, a reason each."""

from __future__ import annotations

__all__ = ["DriverError", "ModelError", "SetpointRefused"]


class DriverError(Exception):
    """Base of every error raised by :mod:`drivers`."""


class SetpointRefused(DriverError):
    """A setpoint breaks the pump's hard limits or names an unknown channel.

    ``str(err)`` is the reason sent back in the refusing ack.
    """


class ModelError(DriverError):
    """A forward model could not be loaded or returned something unusable."""
