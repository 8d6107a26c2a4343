"""Which inputs matter: SHAP values of the spectrum model's predictions, per input.

Two outputs of a fitted spectrum model
(:class:`~agent.core.strategies.spectrum_model.FittedSpectrumModel`) are
explained:

* ``loss``: the ensemble's mean predicted loss (the campaign's objective on
  each member's predicted spectrum);
* ``peak_nm``: the wavelength of the maximum of the ensemble's mean predicted
  spectrum.

SHAP values come from the ``shap`` library (an optional extra:
``pip install .[explain]``), model-agnostic: ``shap.Explainer`` on the
prediction function with an independent masker over ``background`` recipes
(exact Shapley values for up to 10 inputs). An input's importance is the mean
absolute SHAP value over the explained recipes, in the output's units (loss,
nm). :func:`importance_table` is the table (CSV), :func:`importance_figure`
the bar plot (one panel per output), :func:`write_importance` writes both; the
campaign report (``sdl-agent report``) draws its ``importance.png`` with the
same figure.

>>> importance_table({"loss": {"a": 0.1, "b": 0.3}}, ("a", "b"))
'input,loss\\nb,0.3\\na,0.1\\n'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported by explain_inputs only: a report may just draw
    from matplotlib.figure import Figure

    from agent.core.strategies.spectrum_model import FittedSpectrumModel

__all__ = [
    "ExplainUnavailable",
    "explain_inputs",
    "importance_figure",
    "importance_table",
    "write_importance",
]

# Rows per call of the model while SHAP evaluates coalitions (memory bound).
_CHUNK = 4096
_TITLES = {"loss": "predicted loss", "peak_nm": "predicted peak wavelength"}
_UNITS = {"loss": "loss", "peak_nm": "nm"}


class ExplainUnavailable(RuntimeError):
    """The optional ``shap`` library is not installed."""


def explain_inputs(
    model: FittedSpectrumModel,
    loss: Any,
    names: Sequence[str],
    background: np.ndarray,
    recipes: np.ndarray,
    *,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean |SHAP| of each input for the predicted loss and peak wavelength.

    Args:
        model: a fitted spectrum model.
        loss: the campaign's objective (with ``wavelengths``).
        names: the input names, in column order.
        background: recipes (k, d) the masker draws absent inputs from.
        recipes: recipes (n, d) to explain.
        seed: seeds SHAP's sampling, if any.

    Returns:
        ``{"loss": {name: value}, "peak_nm": {name: value}}``.

    Raises:
        ExplainUnavailable: ``shap`` is not installed.
    """
    shap = _import_shap()
    import torch

    from agent.core.strategies.spectrum_model import one_torch_thread

    wavelengths = np.asarray(loss.wavelengths, dtype=float)

    def predict(x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), 2))
        for i in range(0, len(x), _CHUNK):
            with torch.no_grad():
                spectra = model.forward(torch.as_tensor(x[i : i + _CHUNK]))
                out[i : i + _CHUNK, 0] = loss(spectra).mean(0).double().numpy()
                peak = spectra.mean(0).argmax(-1).numpy()
            out[i : i + _CHUNK, 1] = wavelengths[peak]
        return out

    masker = shap.maskers.Independent(np.asarray(background, float), max_samples=len(background))
    explainer = shap.Explainer(predict, masker, feature_names=list(names), seed=seed)
    with one_torch_thread():
        values = explainer(np.asarray(recipes, float), silent=True).values  # (n, d, 2)
    mean_abs = np.abs(values).mean(axis=0)  # (d, 2)
    return {
        output: {name: float(mean_abs[j, k]) for j, name in enumerate(names)}
        for k, output in enumerate(("loss", "peak_nm"))
    }


def importance_table(importance: dict[str, dict[str, float]], names: Sequence[str]) -> str:
    """CSV text: one row per input, most important (by the first output) first."""
    outputs = list(importance)
    first = importance[outputs[0]]
    order = sorted(names, key=lambda n: -first[n])
    lines = ["input," + ",".join(outputs)]
    lines += [n + "," + ",".join(f"{importance[o][n]:.6g}" for o in outputs) for n in order]
    return "\n".join(lines) + "\n"


def importance_figure(
    importance: dict[str, dict[str, float]], names: Sequence[str], title: str | None = None
) -> Figure:
    """Horizontal bars per input, one panel per output, the most important input (by the
    first output) on top in every panel. Drawn on a :class:`~matplotlib.figure.Figure`
    (Agg when saved), never through ``pyplot``."""
    from matplotlib.figure import Figure

    outputs = list(importance)
    first = importance[outputs[0]]
    order = sorted(names, key=lambda n: first[n])  # barh draws bottom-up
    size = (max(4.5 * len(outputs), 8.0), 0.4 * len(names) + 1.6)
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    axes = fig.subplots(1, len(outputs), squeeze=False)[0]
    for ax, output in zip(axes, outputs, strict=True):
        ax.barh(order, [importance[output][n] for n in order], color="#3182bd")
        unit = _UNITS.get(output)
        ax.set_xlabel(f"mean |SHAP| ({unit})" if unit else output)
        ax.set_title(_TITLES.get(output, output), fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def write_importance(
    importance: dict[str, dict[str, float]], names: Sequence[str], out_dir: Path
) -> tuple[Path, Path]:
    """Write ``input_importance.csv`` and ``input_importance.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "input_importance.csv"
    csv_path.write_text(importance_table(importance, names), encoding="utf-8")
    png_path = out_dir / "input_importance.png"
    importance_figure(importance, names).savefig(png_path, dpi=120)
    return csv_path, png_path


# --- private helpers ---------------------------------------------------------------


def _import_shap() -> Any:
    """``import shap`` with numba's JIT off for shap's own kernels.

    shap compiles its masking kernels with numba on their first call, without
    caching: 6 s of a 6.5 s explanation of 60 recipes of 5 inputs (against 32
    background recipes) on a 2-core machine, paid again by every process. Run
    as plain Python they take about 1 s in all at that size. numba reads the
    switch when a function is decorated, so it is set only while shap is
    imported; a shap imported earlier in the process keeps its JIT (same values).

    Raises:
        ExplainUnavailable: ``shap`` is not installed.
    """
    try:
        from numba.core import config
    except ImportError:  # shap needs numba: its import below says what is missing
        config = None
    before = getattr(config, "DISABLE_JIT", None)
    if config is not None:
        config.DISABLE_JIT = True
    try:
        import shap
    except ImportError:
        raise ExplainUnavailable(
            "SHAP values need the optional 'shap' library: pip install '.[explain]'"
        ) from None
    finally:
        if config is not None:
            config.DISABLE_JIT = before
    return shap
