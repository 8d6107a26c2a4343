"""``python -m drivers pump|spectrometer|xrd ...`` (see :mod:`drivers.cli`)."""

from __future__ import annotations

import sys

from drivers.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
