"""The simulated silver-nanoparticle world: pump flows -> mean spectrum and phase.

A forward model turns the flows of the pump channels (uL/min) into what the
instruments would see: the noise-free mean UV-Vis absorbance of the droplets
and the phase an XRD would report. Simulated drivers load one by import path
(``module:callable``, see :func:`load_model`), so another world can be plugged
in without touching them; :func:`agnp_world` is the default.

The reference world is physics, not a curve fit (docs/world.md has the
equations and the landscape they make):

1. Recipe (:class:`Recipe`). Shares ``q_i = 100 flow_i / q_aq`` of the
   aqueous flow ``q_aq`` (every channel but ``oil``), and ``q_tot = q_aq``.
2. Chemistry (:class:`AgnpChemistry`). Reduction yield from citrate, PVA and
   residence time; secondary nucleation at high AgNO3; silver grown per seed
   ``G``; plate aspect ratio from ``G`` and citrate; widths of the size and
   shape distributions; a capping layer that raises the local permittivity.
3. Optics. Silver permittivity (Drude + interband, Yu et al. 2017) with size
   damping; oblate-spheroid polarisability in the modified long-wavelength
   approximation (Kuwata et al. 2003); random orientation; log-normal size
   and shape distributions; ``A = N sigma_ext l / ln 10``.

>>> world = agnp_world()
>>> wl = np.arange(380.0, 801.0)
>>> flows = flows_from_recipe(q_agno3=33, q_pva=40, q_tsc=0.5, q_seed=2.3, q_tot=400)
>>> a = world.spectrum(flows, wl)
>>> a.shape, bool(np.all(a >= 0)), bool(620 < wl[a.argmax()] < 660)
((421,), True, True)
>>> world.phase(flows)[0]
'Ag-fcc'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "CHANNELS",
    "EPS_WATER",
    "AgnpChemistry",
    "AgnpWorld",
    "ForwardModel",
    "Morphology",
    "Recipe",
    "agnp_world",
    "ensemble_extinction",
    "extinction",
    "flows_from_recipe",
    "load_model",
    "oblate_depolarisation",
    "silver_permittivity",
]

CHANNELS = ("agno3", "pva", "tsc", "seed", "water", "oil")
"""Pump channels the reference world reads; ``oil`` is not part of the aqueous flow."""

EPS_WATER = 1.77
"""Relative permittivity of water in the visible."""

_HC_EV_NM = 1239.841984  # h c: photon energy hbar w = _HC_EV_NM / wavelength
_HBAR_VF_EV_NM = 0.9149  # hbar v_F of silver (v_F = 1.39e6 m/s), in eV nm
_SHARES = ("agno3", "pva", "tsc", "seed")


@runtime_checkable
class ForwardModel(Protocol):
    """What a simulated instrument needs to know about the world."""

    def spectrum(self, flows: Mapping[str, float], wavelengths: np.ndarray) -> np.ndarray:
        """Noise-free mean absorbance of droplets made with ``flows`` (uL/min)."""
        ...

    def phase(self, flows: Mapping[str, float]) -> tuple[str, float]:
        """The phase an XRD would report and its confidence in [0, 1]; deterministic."""
        ...


# ----------------------------------------------------------------------------- optics


def silver_permittivity(
    wavelength_nm: np.ndarray | float, radius_nm: np.ndarray | float = np.inf
) -> np.ndarray:
    """Relative permittivity of silver, Drude + interband, with size damping.

    Yu, Liz-Marzan & Garcia de Abajo, Chem. Soc. Rev. 46, 6710 (2017)::

        eps(w)   = eps_b(w) - wp^2 / (w (w + i g(R)))
        eps_b(w) = A + B ln((w1 - w - i g1) / (w1 + w + i g1)) + C exp(-w / w2)
        g(R)     = g_bulk + hbar v_F / R

    with hbar wp = 9.17 eV, hbar g_bulk = 0.021 eV, A = -9.71, B = -1.111,
    C = 13.77, hbar w1 = 4.02 eV, hbar w2 = 18.5 eV, hbar g1 = 0.076 eV,
    v_F = 1.39e6 m/s.

    Args:
        wavelength_nm: vacuum wavelengths (nm).
        radius_nm: electron mean-free-path limit (sphere radius, or ``3V/S``);
            broadcasts against ``wavelength_nm``; ``inf`` is bulk silver.

    Returns:
        Complex permittivity, the broadcast shape of the arguments.

    >>> e = silver_permittivity(600.0)
    >>> bool(-17 < e.real < -14 and 0 < e.imag < 1)
    True
    """
    wl = np.asarray(wavelength_nm, dtype=float)
    e1, e2 = _silver_parts(wl, _interband(wl), np.asarray(radius_nm, dtype=float))
    return e1 + 1j * e2


def oblate_depolarisation(aspect: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Depolarisation factors of an oblate spheroid with semi-axes ``(a, a, c)``.

    With ``m = a / c >= 1`` and ``f = sqrt(m^2 - 1)``::

        L_c = (1 + f^2) / f^2 (1 - arctan(f) / f)     (along the short axis)
        L_a = (1 - L_c) / 2                           (in the plane)

    Args:
        aspect: ``a / c``; values below 1 count as 1 (a sphere: 1/3, 1/3).

    Returns:
        ``(L_a, L_c)``, each shaped like ``aspect``.

    >>> la, lc = oblate_depolarisation(np.array([1.0, 8.0]))
    >>> np.round(la, 3).tolist(), np.round(lc, 3).tolist()
    ([0.333, 0.085], [0.333, 0.831])
    """
    f2 = np.maximum(np.asarray(aspect, dtype=float) ** 2 - 1.0, 0.0)
    small = f2 < 1e-4
    fs = np.sqrt(np.where(small, 1.0, f2))
    exact = (1.0 + fs**2) / fs**2 * (1.0 - np.arctan(fs) / fs)
    series = (1.0 + f2) * (1.0 / 3.0 - f2 / 5.0 + f2**2 / 7.0)
    lc = np.where(small, series, exact)
    return (1.0 - lc) / 2.0, lc


def extinction(
    wavelength_nm: np.ndarray,
    eps: np.ndarray,
    eps_m: float,
    volume_nm3: np.ndarray | float,
    length_nm: np.ndarray | float,
    depolarisation: np.ndarray | float,
) -> np.ndarray:
    """Extinction cross-section (nm^2) of one spheroid mode, size-corrected.

    Modified long-wavelength approximation of Kuwata et al., Appl. Phys. Lett.
    83, 4625 (2003), which follows Mie theory for silver and gold spheroids
    up to ~200 nm::

        alpha = V / (L + eps_m / (eps - eps_m) + A(L) eps_m x^2 + B(L) eps_m^2 x^4
                     - i 4 pi^2 eps_m^{3/2} V / (3 lambda^3))
        A(L) = -0.4865 L - 1.046 L^2 + 0.8481 L^3
        B(L) =  0.01909 L + 0.1999 L^2 + 0.6077 L^3
        x = pi length / lambda,     sigma_ext = (2 pi sqrt(eps_m) / lambda) Im alpha

    ``length`` is the particle's full extent along the field. The ``x^2`` term
    (dynamic depolarisation) red-shifts big particles, the ``x^4`` and
    radiative terms broaden them; as ``x -> 0`` it is the quasi-static
    spheroid ``V Im[(eps - eps_m) / (eps_m + L (eps - eps_m))]``. Silver
    spheres in water of 20/40/60/80 nm peak at 384/396/418/450 nm (Mie:
    384/397/417/445).

    All arguments broadcast together; ``eps`` carries the wavelength axis.
    """
    wl = np.asarray(wavelength_nm, dtype=float)
    e = np.asarray(eps)
    lam = np.asarray(depolarisation, dtype=float)
    v = np.asarray(volume_nm3, dtype=float)
    sq = np.sqrt(eps_m)
    den_i, kr = _resonance_terms(wl, e.real, e.imag, eps_m, v)
    x2 = (np.pi * np.asarray(length_nm, dtype=float) / wl) ** 2
    den_r = _real_denominator(lam, kr, x2, eps_m)
    return (2.0 * np.pi * sq / wl) * (-v * den_i / (den_r * den_r + den_i * den_i))


def ensemble_extinction(
    wavelength_nm: np.ndarray,
    volume_nm3: float,
    aspect: float,
    sigma_volume: float,
    sigma_aspect: float,
    eps_m: float,
    n_volume: int = 3,
    n_aspect: int = 15,
) -> np.ndarray:
    """``E[sigma_ext] / E[V]`` (1/nm) of randomly oriented oblate spheroids.

    ``sigma_ext = (2 sigma_a + sigma_c) / 3`` (random orientation); the volume
    is log-normal (median ``volume_nm3``, log-sd ``sigma_volume``) and
    ``aspect - 1`` independently log-normal (median ``aspect - 1``, log-sd
    ``sigma_aspect``). Multiplied by the silver volume fraction and ``l / ln 10``
    this is the absorbance.

    Args:
        wavelength_nm: 1-D wavelengths (nm).
        volume_nm3, aspect, sigma_volume, sigma_aspect: the distribution.
        eps_m: permittivity around the particles.
        n_volume, n_aspect: quadrature nodes (Gauss-Hermite over log-volume,
            evenly spaced over log-aspect so that broad shape distributions
            give smooth bands, not ripples).

    Returns:
        Shape like ``wavelength_nm``.
    """
    row = np.asarray(wavelength_nm, dtype=float).reshape(1, -1)
    out = _population(
        row, _interband(row), volume_nm3, aspect, sigma_volume, sigma_aspect, eps_m,
        n_volume, n_aspect,
    )  # fmt: skip
    return out.reshape(np.shape(wavelength_nm))


# ----------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Recipe:
    """Shares (% of the aqueous flow) and the aqueous flow ``q_tot`` (uL/min)."""

    q_agno3: float
    q_pva: float
    q_tsc: float
    q_seed: float
    q_tot: float

    @classmethod
    def from_flows(cls, flows: Mapping[str, float]) -> Recipe:
        """Derive the recipe from per-channel flows (uL/min).

        ``q_aq`` is the sum of every channel but ``oil`` (unknown channels count
        as aqueous, like water) and ``q_i = 100 flow_i / q_aq``. Missing,
        negative or non-finite flows count as 0; no aqueous flow gives all zeros.

        >>> Recipe.from_flows({"agno3": 20, "seed": 10, "water": 70, "oil": 100})
        Recipe(q_agno3=20.0, q_pva=0.0, q_tsc=0.0, q_seed=10.0, q_tot=100.0)
        """
        clean = {str(k): _nonneg(v) for k, v in flows.items()}
        q_aq = sum(v for k, v in clean.items() if k != "oil")
        if q_aq <= 0.0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        sh = [100.0 * clean.get(k, 0.0) / q_aq for k in _SHARES]
        return cls(sh[0], sh[1], sh[2], sh[3], q_aq)


def flows_from_recipe(
    q_agno3: float, q_pva: float, q_tsc: float, q_seed: float, q_tot: float
) -> dict[str, float]:
    """Pump flows (uL/min) for a recipe, mapped as examples/agnp.toml maps them.

    A share channel gets ``q_tot share / 100``, water the rest of ``q_tot``,
    oil ``q_tot``.

    >>> flows_from_recipe(10, 20, 5, 5, 200)["water"]
    120.0
    """
    f = {
        "agno3": q_tot * q_agno3 / 100.0,
        "pva": q_tot * q_pva / 100.0,
        "tsc": q_tot * q_tsc / 100.0,
        "seed": q_tot * q_seed / 100.0,
    }
    f["water"] = max(q_tot - sum(f.values()), 0.0)
    f["oil"] = q_tot
    return {k: float(v) for k, v in f.items()}


# -------------------------------------------------------------------------- chemistry


@dataclass(frozen=True)
class Morphology:
    """What a recipe makes: grown seeds (plates) and secondary small spheres.

    Attributes:
        growth: silver grown per seed, in seed volumes (``G``).
        volume_nm3: median volume of a grown particle, ``V_seed (1 + G)``.
        aspect: median in-plane / thickness ratio of a grown particle (>= 1).
        sigma_volume: log-sd of the volume distribution.
        sigma_aspect: log-sd of ``aspect - 1``.
        silver_grown: silver in grown particles (seed units, ``q_seed (1 + G)``).
        silver_nucleated: silver in secondary spheres (seed units).
        eps_local: permittivity around the particles (water + capping layer).
        excess_agno3: AgNO3 share beyond the reducing/capping capacity (Ag2O if > 0).
    """

    growth: float
    volume_nm3: float
    aspect: float
    sigma_volume: float
    sigma_aspect: float
    silver_grown: float
    silver_nucleated: float
    eps_local: float
    excess_agno3: float


@dataclass(frozen=True)
class AgnpChemistry:
    """Constants of the recipe -> morphology map; docs/world.md derives each step.

    Shares ``a, p, t, s`` (AgNO3, PVA, citrate, seed) in %, flow ``q`` in uL/min::

        rate   = k_tsc t + k_pva p + k_bg                      reduction rate
        Y      = 1 - exp(-rate q_ref / q)                      yield in the residence time
        nuc    = nuc_max sigmoid((a Y (1 + t / tsc_nuc) - nuc_onset) / nuc_width)
        S_nuc  = gamma (a Y nuc + late a (1 - Y))              secondary + late small spheres
        G      = gamma a Y (1 - nuc) / s                       silver grown per seed
        aspect = 1 + aspect_max h(t) G^n / (G^n + growth_half^n),
        h(t)   = 1 - tsc_depth t^2 / (t^2 + tsc_half^2)        citrate favours plates when scarce
        sigma_aspect = pva_gain (1 + t / tsc_spread)
                       (min + (max - min) (1 - exp(-ln(a Y / focus_agno3)^2 / (2 focus_width^2))))
        pva_gain = 1 - pva_narrowing (p - 10) / 30,   sigma_volume = sigma_volume pva_gain
        eps_local = 1.77 + d_eps p / (p + pva_half)
        excess = a - (cap_tsc t + cap_pva p + cap_bg)           Ag2O where > 0
    """

    k_tsc: float = 0.15
    k_pva: float = 0.01
    k_bg: float = 0.7
    q_ref: float = 1200.0
    late: float = 0.5
    nuc_max: float = 0.5
    tsc_nuc: float = 30.0
    nuc_onset: float = 40.0
    nuc_width: float = 5.0
    nuc_radius: float = 6.0
    seed_radius: float = 4.0
    gamma: float = 1.5
    aspect_max: float = 5.2
    growth_half: float = 1.5
    hill: float = 2.0
    tsc_depth: float = 0.25
    tsc_half: float = 12.0
    sigma_volume: float = 0.45
    sigma_aspect_min: float = 0.25
    sigma_aspect_max: float = 0.45
    focus_agno3: float = 32.0
    focus_width: float = 0.6
    pva_narrowing: float = 0.2
    tsc_spread: float = 60.0
    d_eps: float = 0.4
    pva_half: float = 15.0
    cap_tsc: float = 2.0
    cap_pva: float = 0.6
    cap_bg: float = 10.0
    phase_width: float = 3.0

    def morphology(self, r: Recipe) -> Morphology:
        """Map a recipe to a :class:`Morphology`; smooth in every share."""
        a, p, t = r.q_agno3, r.q_pva, r.q_tsc
        s = max(r.q_seed, 1e-3)
        rate = self.k_tsc * t + self.k_pva * p + self.k_bg
        yld = -np.expm1(-rate * self.q_ref / max(r.q_tot, 1e-6))
        reduced = a * yld
        drive = reduced * (1.0 + t / self.tsc_nuc)
        nuc = self.nuc_max * _sigmoid((drive - self.nuc_onset) / self.nuc_width)
        if r.q_seed <= 0.0:
            nuc = 1.0
        growth = self.gamma * reduced * (1.0 - nuc) / s
        gn = growth**self.hill
        h = 1.0 - self.tsc_depth * t * t / (t * t + self.tsc_half**2)
        aspect = 1.0 + self.aspect_max * h * gn / (gn + self.growth_half**self.hill)
        pva_gain = 1.0 - self.pva_narrowing * (p - 10.0) / 30.0
        focus = np.log(max(reduced, 1e-6) / self.focus_agno3) / self.focus_width
        spread = self.sigma_aspect_min + (self.sigma_aspect_max - self.sigma_aspect_min) * (
            1.0 - np.exp(-0.5 * focus * focus)
        )
        return Morphology(
            growth=float(growth),
            volume_nm3=float(4.0 / 3.0 * np.pi * self.seed_radius**3 * (1.0 + growth)),
            aspect=float(aspect),
            sigma_volume=float(self.sigma_volume * pva_gain),
            sigma_aspect=float(pva_gain * (1.0 + t / self.tsc_spread) * spread),
            silver_grown=float(r.q_seed * (1.0 + growth)),
            silver_nucleated=float(self.gamma * (reduced * nuc + self.late * a * (1.0 - yld))),
            eps_local=float(EPS_WATER + self.d_eps * p / (p + self.pva_half)),
            excess_agno3=float(a - (self.cap_tsc * t + self.cap_pva * p + self.cap_bg)),
        )


# ------------------------------------------------------------------------------ world


@dataclass(frozen=True)
class AgnpWorld:
    """The reference forward model: silver nanoparticles from a droplet reactor.

    Attributes:
        chemistry: the recipe -> morphology constants.
        scale: absorbance per unit silver (seed units) per nm^-1 of
            ``E[sigma]/E[V]``; folds in the path length, ``1 / ln 10`` and the
            stock concentrations.
        n_volume, n_aspect: quadrature nodes (see :func:`ensemble_extinction`).
        grid_step: the optics are computed on a grid at most this coarse (nm)
            and interpolated linearly onto the wavelengths asked for (bands are
            >= 20 nm wide: error < 0.5 % of the peak).
        seed: recorded only; the reference world has no randomness.
    """

    chemistry: AgnpChemistry = field(default_factory=AgnpChemistry)
    scale: float = 0.044
    n_volume: int = 3
    n_aspect: int = 15
    grid_step: float = 2.0
    seed: int = 0

    def morphology(self, flows: Mapping[str, float]) -> Morphology:
        """The particles these flows make."""
        return self.chemistry.morphology(Recipe.from_flows(flows))

    def spectrum(self, flows: Mapping[str, float], wavelengths: np.ndarray) -> np.ndarray:
        """Noise-free mean absorbance of the droplets made with ``flows``.

        Args:
            flows: pump channel -> uL/min; missing channels count as 0.
            wavelengths: nm, any shape, all finite and > 0.

        Returns:
            Absorbance >= 0 shaped like ``wavelengths``; zeros if no aqueous flow.

        Raises:
            ValueError: a wavelength is not finite or not positive.
        """
        wl = np.asarray(wavelengths, dtype=float)
        if wl.size and not (np.all(np.isfinite(wl)) and wl.min() > 0.0):
            raise ValueError("wavelengths must be finite and > 0 nm")
        r = Recipe.from_flows(flows)
        if r.q_tot <= 0.0 or wl.size == 0:
            return np.zeros_like(wl)
        flat = wl.ravel()
        lo, hi = float(flat.min()), float(flat.max())
        n_grid = int(np.ceil((hi - lo) / self.grid_step)) + 1
        grid = flat if n_grid >= flat.size else np.linspace(lo, hi, n_grid)
        out = self.absorbance(self.chemistry.morphology(r), grid)
        if grid is not flat:
            out = np.interp(flat, grid, out)
        return out.reshape(wl.shape)

    def absorbance(self, m: Morphology, wavelengths: np.ndarray) -> np.ndarray:
        """Absorbance of the particles ``m`` at 1-D ``wavelengths`` (nm), exactly.

        ``A = scale (S_grown E[sigma]/E[V] + S_nuc E[sigma]/E[V])``: the silver
        in a population over its mean particle volume is its number density.
        """
        row = np.asarray(wavelengths, dtype=float).reshape(1, -1)
        eps_b = _interband(row)
        out = np.zeros_like(row)
        if m.silver_grown > 0.0:
            out += m.silver_grown * _population(
                row, eps_b, m.volume_nm3, m.aspect, m.sigma_volume, m.sigma_aspect,
                m.eps_local, self.n_volume, self.n_aspect,
            )  # fmt: skip
        if m.silver_nucleated > 0.0:
            v_nuc = 4.0 / 3.0 * np.pi * self.chemistry.nuc_radius**3
            out += m.silver_nucleated * _population(
                row, eps_b, v_nuc, 1.0, 0.4, 0.0, m.eps_local, 3, 1
            )
        return np.maximum(self.scale * out[0], 0.0)

    def phase(self, flows: Mapping[str, float]) -> tuple[str, float]:
        """``"Ag2O"`` where AgNO3 exceeds the reducing/capping capacity, else ``"Ag-fcc"``.

        ``excess = q_agno3 - (cap_tsc q_tsc + cap_pva q_pva + cap_bg)``;
        ``confidence = 0.5 + 0.45 tanh(|excess| / phase_width)``: 0.5 on the
        boundary, 0.95 deep inside a region. No silver at all (no AgNO3 and no
        seed, or no aqueous flow): ``("none", 0.95)``.
        """
        r = Recipe.from_flows(flows)
        if r.q_agno3 <= 0.0 and r.q_seed <= 0.0:
            return "none", 0.95
        excess = self.chemistry.morphology(r).excess_agno3
        conf = 0.5 + 0.45 * float(np.tanh(abs(excess) / self.chemistry.phase_width))
        return ("Ag2O" if excess > 0.0 else "Ag-fcc"), conf


def agnp_world(seed: int = 0) -> AgnpWorld:
    """The default world (import path ``drivers.world:agnp_world``); ``seed`` is recorded."""
    return AgnpWorld(seed=seed)


def load_model(path: str, seed: int = 0) -> ForwardModel:
    """Load a forward model by import path ``"module:callable"``; calls ``callable(seed=seed)``.

    Raises:
        ValueError: the path is not ``module:callable``, the attribute is missing
            or not callable, or what it returns has no ``spectrum``/``phase``.
        ImportError: the module cannot be imported.

    >>> isinstance(load_model("drivers.world:agnp_world"), ForwardModel)
    True
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"model path must be 'module:callable', got {path!r}")
    mod_name, attr = (part.strip() for part in path.split(":"))
    if not mod_name or not attr:
        raise ValueError(f"model path must be 'module:callable', got {path!r}")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ImportError(f"cannot import model module {mod_name!r} ({path!r}): {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"module {mod_name!r} has no attribute {attr!r} ({path!r})")
    if not callable(factory):
        raise ValueError(f"{path!r} is not callable")
    model = factory(seed=seed)
    if not isinstance(model, ForwardModel):
        raise ValueError(f"{path!r} returned a {type(model).__name__}, not a ForwardModel")
    return model


# ---------------------------------------------------------------------------- helpers


def _interband(wl: np.ndarray) -> np.ndarray:
    """Interband permittivity ``eps_b`` of silver (complex), like ``wl`` (nm)."""
    w = _HC_EV_NM / wl
    w1, g1 = 4.02, 0.076
    return (
        -9.71 - 1.111 * np.log((w1 - w - 1j * g1) / (w1 + w + 1j * g1)) + 13.77 * np.exp(-w / 18.5)
    )


def _silver_parts(
    wl: np.ndarray, eps_b: np.ndarray, radius_nm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of ``eps_b - wp^2 / (w (w + i g(R)))``, broadcast."""
    w = _HC_EV_NM / wl
    g = 0.021 + _HBAR_VF_EV_NM / radius_nm
    d = 9.17**2 / (w * w + g * g)
    return eps_b.real - d, eps_b.imag + d * g / w


def _resonance_terms(
    wl: np.ndarray, e1: np.ndarray, e2: np.ndarray, eps_m: float, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Imaginary part of the MLWA denominator, and ``Re[eps_m / (eps - eps_m)]``."""
    ur = e1 - eps_m
    k = eps_m / (ur * ur + e2 * e2)
    rad = (4.0 * np.pi**2 / 3.0) * eps_m * np.sqrt(eps_m) * v / wl**3
    return -k * e2 - rad, k * ur


def _real_denominator(lam: np.ndarray, kr: np.ndarray, x2: np.ndarray, eps_m: float) -> np.ndarray:
    """``L + Re[eps_m / (eps - eps_m)] + A(L) eps_m x^2 + B(L) eps_m^2 x^4``."""
    a_l = lam * (-0.4865 + lam * (-1.046 + 0.8481 * lam)) * eps_m
    b_l = lam * (0.01909 + lam * (0.1999 + 0.6077 * lam)) * eps_m**2
    return kr + lam + x2 * (a_l + b_l * x2)


def _population(
    wl: np.ndarray,
    eps_b: np.ndarray,
    volume: float,
    aspect: float,
    sigma_v: float,
    sigma_a: float,
    eps_m: float,
    n_v: int,
    n_a: int,
) -> np.ndarray:
    """:func:`ensemble_extinction` on a (1, m) row, with ``eps_b`` precomputed.

    Both modes share the permittivity and radiative terms, computed once.
    """
    zv, wv = _nodes("gauss", n_v)
    za, wa = _nodes("even", n_a)
    v = np.repeat(volume * np.exp(sigma_v * zv), za.size)[:, None]
    ar = np.tile(np.maximum(1.0 + (aspect - 1.0) * np.exp(sigma_a * za), 1.0), zv.size)[:, None]
    w = np.outer(wv, wa).reshape(-1, 1)
    a_semi = np.cbrt(3.0 * v * ar / (4.0 * np.pi))
    c_semi = a_semi / ar
    la, lc = oblate_depolarisation(ar)
    e1, e2 = _silver_parts(wl, eps_b, 3.0 * v / _oblate_area(a_semi, c_semi))
    den_i, kr = _resonance_terms(wl, e1, e2, eps_m, v)
    num = den_i * (-w * v)
    di2 = den_i * den_i
    inv_wl2 = 1.0 / (wl * wl)
    total = np.zeros_like(wl)
    for lam, length, share in ((la, 2.0 * a_semi, 2.0 / 3.0), (lc, 2.0 * c_semi, 1.0 / 3.0)):
        den_r = _real_denominator(lam, kr, (np.pi * length) ** 2 * inv_wl2, eps_m)
        total += share * np.sum(num / (den_r * den_r + di2), axis=0, keepdims=True)
    return (2.0 * np.pi * np.sqrt(eps_m) / wl) * total / float(np.sum(w * v))


def _oblate_area(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Surface area of an oblate spheroid with semi-axes (a, a, c), c <= a."""
    e2 = np.clip(1.0 - (c / a) ** 2, 0.0, 1.0)
    small = e2 < 1e-6
    es = np.sqrt(np.where(small, 0.25, e2))
    exact = (1.0 - es**2) / es * np.arctanh(es)
    return 2.0 * np.pi * a**2 * (1.0 + np.where(small, 1.0 - 2.0 * e2 / 3.0, exact))


_NODES: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def _nodes(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) for ``E[f(z)]``, ``z ~ N(0, 1)``.

    ``"gauss"``: Gauss-Hermite; ``"even"``: evenly spaced on [-2.8, 2.8].
    """
    if (kind, n) not in _NODES:
        if n == 1:
            z, w = np.zeros(1), np.ones(1)
        elif kind == "gauss":
            z, w = np.polynomial.hermite_e.hermegauss(n)
        else:
            z = np.linspace(-2.8, 2.8, n)
            w = np.exp(-0.5 * z * z)
        _NODES[(kind, n)] = (z, w / w.sum())
    return _NODES[(kind, n)]


def _nonneg(v: object) -> float:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return x if np.isfinite(x) and x > 0.0 else 0.0


def _sigmoid(z: float) -> float:
    return float(0.5 * (1.0 + np.tanh(0.5 * z)))
