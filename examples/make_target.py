"""Write examples/agnp_target.csv: the simulated spectrum of silver nanoprisms.

The study's target was a simulated spectrum of triangular silver nanoprisms
with the in-plane dipole near 640 nm and the maximum absorbance set to 1.2.
Ours is made with the reference world's optics (drivers/world.py): prisms of
~65 nm edge and 8 nm thickness, modelled as the oblate spheroids of the same
volume, randomly oriented, with a narrow log-normal spread of size and shape,
in water with a thin capping layer. The aspect ratio is solved for so that
the main peak sits at 640 nm; the spectrum is then scaled to max 1.2. No
recipe of the world reproduces it exactly (its shape distribution is
narrower than any the chemistry makes).

Usage::

    python examples/make_target.py [--out examples/agnp_target.csv]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from scipy.optimize import brentq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from drivers.world import EPS_WATER, ensemble_extinction

__all__ = ["PEAK_NM", "prism_target"]

PEAK_NM = 640.0
EDGE_NM = 65.0
THICKNESS_NM = 8.0
SIGMA_VOLUME = 0.25
SIGMA_ASPECT = 0.08
EPS_LOCAL = EPS_WATER + 0.25  # water + a thin citrate/PVA shell
MAX_ABSORBANCE = 1.2


def prism_target(wavelengths: np.ndarray) -> tuple[np.ndarray, float]:
    """The target on ``wavelengths`` (nm) and the spheroid aspect ratio used.

    The peak position moves smoothly with the aspect ratio, so a root finder on
    the peak wavelength of a fine (0.1 nm) grid near 640 nm fixes it.
    """
    volume = np.sqrt(3.0) / 4.0 * EDGE_NM**2 * THICKNESS_NM
    fine = np.arange(560.0, 720.0, 0.1)

    def peak_offset(aspect: float) -> float:
        s = ensemble_extinction(fine, volume, aspect, SIGMA_VOLUME, SIGMA_ASPECT, EPS_LOCAL)
        return float(fine[np.argmax(s)]) - PEAK_NM

    aspect = brentq(peak_offset, 3.0, 10.0, xtol=1e-3)
    s = ensemble_extinction(wavelengths, volume, aspect, SIGMA_VOLUME, SIGMA_ASPECT, EPS_LOCAL)
    return MAX_ABSORBANCE * s / s.max(), aspect


def main(argv: list[str] | None = None) -> int:
    """Write the CSV (header ``wavelength_nm,absorbance``, 380..800 nm step 1)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = pathlib.Path(__file__).resolve().parent
    ap.add_argument("--out", type=pathlib.Path, default=here / "agnp_target.csv")
    args = ap.parse_args(argv)
    wl = np.arange(380.0, 801.0, 1.0)
    target, aspect = prism_target(wl)
    rows = "\n".join(f"{w:.0f},{a:.6f}" for w, a in zip(wl, target, strict=True))
    args.out.write_text("wavelength_nm,absorbance\n" + rows + "\n")
    print(
        f"wrote {args.out}: {wl.size} rows, peak {wl[target.argmax()]:.0f} nm, "
        f"max {target.max():.3f}, spheroid aspect {aspect:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
