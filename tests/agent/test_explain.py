"""Tests for agent.explain: SHAP values of the spectrum model's predictions.

Runtime: ~10 s with shap installed (shap's import and first-call compilation, ~8 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from agent.core.objective import AgnpLoss
from agent.core.strategies.spectrum_model import SpectrumEnsemble
from agent.explain import ExplainUnavailable, explain_inputs, importance_table, write_importance

WL = np.linspace(380.0, 800.0, 106)
LOSS = AgnpLoss(0.9 * np.exp(-0.5 * ((WL - 640.0) / 40.0) ** 2), WL)
NAMES = ("a", "b", "c", "d")


def planted(x: np.ndarray) -> np.ndarray:
    """Input ``c`` moves the band 450 -> 750 nm; ``a`` nudges it by 10 nm; ``b``, ``d`` nothing."""
    centre = 450.0 + 300.0 * x[:, 2:3] + 10.0 * x[:, :1]
    return 0.9 * np.exp(-0.5 * ((WL - centre) / 40.0) ** 2)


@pytest.fixture(scope="module")
def model_and_data():
    x = np.random.default_rng(0).random((80, 4))
    return SpectrumEnsemble(members=3, max_epochs=600).fit(x, planted(x), seed=0), x


def test_shap_ranks_the_planted_dominant_input_first(model_and_data, tmp_path: Path) -> None:
    pytest.importorskip("shap", reason="shap is the optional [explain] extra; not installed")
    model, x = model_and_data
    imp = explain_inputs(model, LOSS, NAMES, background=x[:12], recipes=x[20:40])
    for output in ("loss", "peak_nm"):
        ranking = sorted(NAMES, key=lambda n: -imp[output][n])
        assert ranking[0] == "c", (output, imp[output])
        assert imp[output]["c"] > 3 * max(imp[output][n] for n in ("b", "d"))
    csv, png = write_importance(imp, NAMES, tmp_path)
    assert csv.read_text().splitlines()[1].startswith("c,")
    assert png.stat().st_size > 1000


def test_without_shap_the_reason_names_the_extra(model_and_data, monkeypatch) -> None:
    model, x = model_and_data
    monkeypatch.setitem(sys.modules, "shap", None)  # import shap -> ImportError
    with pytest.raises(ExplainUnavailable, match=r"\.\[explain\]"):
        explain_inputs(model, LOSS, NAMES, background=x[:5], recipes=x[:5])


def test_importance_table_orders_by_the_first_output() -> None:
    table = importance_table({"loss": {"a": 0.1, "b": 0.3}, "peak_nm": {"a": 5, "b": 1}}, "ab")
    assert table == "input,loss,peak_nm\nb,0.3,1\na,0.1,5\n"
