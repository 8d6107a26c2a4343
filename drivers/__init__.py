"""Instrument-side processes: a shared driver runtime and simulated instruments."""
