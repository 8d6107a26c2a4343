"""A tiny forward model for the driver tests, loaded by import path ``toy_world:toy_world``.

One Gaussian band whose peak moves from 400 nm to 700 nm with the AgNO3 share
of (AgNO3 + seed) and whose height follows the aqueous flow; a phase that is
``Ag-fcc`` when AgNO3 flows and ``none`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["ToyWorld", "broken_world", "toy_world"]


class ToyWorld:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def spectrum(self, flows: Mapping[str, float], wavelengths: np.ndarray) -> np.ndarray:
        agno3, seed = flows.get("agno3", 0.0), flows.get("seed", 0.0)
        aqueous = sum(v for k, v in flows.items() if k != "oil")
        peak = 400.0 + 300.0 * agno3 / (agno3 + seed + 1.0)
        height = 1.0 * aqueous / (aqueous + 200.0)
        return height * np.exp(-0.5 * ((wavelengths - peak) / 40.0) ** 2)

    def phase(self, flows: Mapping[str, float]) -> tuple[str, float]:
        return ("Ag-fcc", 0.9) if flows.get("agno3", 0.0) > 0 else ("none", 0.6)


def toy_world(seed: int = 0) -> ToyWorld:
    return ToyWorld(seed)


def broken_world(seed: int = 0) -> ToyWorld:
    raise RuntimeError("this world does not build")
