"""The bench's results files can be read as written: every fraction of the peak is at most 1 (the peak is
a ceiling), and every headline figure carries its spread over the repeats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT

RESULTS = [
    p
    for p in (
        ROOT / "bench" / "results.json",
        ROOT / "bench" / "results-quick.json",
        ROOT / "bench" / "results-gpu.json",
    )
    if p.exists()
]


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_fractions_are_shares_of_a_ceiling_and_headlines_have_spreads(path) -> None:
    results = json.loads(path.read_text())
    fractions = {k: v for k, v in results.items() if "_fraction_of_" in k and isinstance(v, (int, float))}
    assert fractions, "no fraction of a limit recorded"
    assert all(0 < v <= 1 for v in fractions.values()), fractions
    assert results["peak"]["ceiling_gflops"] >= results["gemm_best_gflops"] > 0  # GEMM stays under the ceiling
    assert results["peak"]["ceiling_gflops"] >= results["peak"]["gflops"]
    headline = results["headline"]
    assert set(results["spread"]) == set(headline), set(headline) ^ set(results["spread"])
    for key, (low, high) in results["spread"].items():
        assert low <= high, key
    for key in ("batch_predict_fraction_of_peak", "train_fraction_of_peak"):
        low, high = results["spread"][key]
        assert high <= 1.0, key
    for key, value in headline.items():  # a headline is one of its repeats' figures: inside their spread
        low, high = results["spread"][key]
        assert value == results[key] and low - 1e-3 * abs(low) <= value <= high + 1e-3 * abs(high), key
    # The fractions recomputed from the rates and FLOP counts beside them (a training step: 3 forwards).
    ceiling = results["peak"]["ceiling_gflops"]
    assert results["batch_predict_fraction_of_peak"] == pytest.approx(
        results["batch_predict_images_per_s"] * results["model_forward_gflops"] / ceiling, rel=0.01, abs=1e-3
    )
    assert results["train_fraction_of_peak"] == pytest.approx(
        results["train_images_per_s"] * 3 * results["train_model_forward_gflops"] / ceiling, rel=0.01, abs=1e-3
    )


def test_readme_performance_table_is_generated_from_the_full_run() -> None:
    from pneumo.integrations import docs

    assert docs.current("bench-table") == docs.expected("bench-table"), "run: python -m pneumo docs"


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_flop_ceiling_in_images_per_s_is_the_ceiling_the_fractions_use(path: Path) -> None:
    """batch_predict_flop_ceiling_images_per_s is ceiling_gflops / model_forward_gflops, the ceiling the
    fraction of peak beside it is a share of (650 images/s at 0.573 of it means a ceiling of ~1135/s)."""
    results = json.loads(path.read_text())
    expected = results["peak"]["ceiling_gflops"] / results["model_forward_gflops"]
    assert results["batch_predict_flop_ceiling_images_per_s"] == pytest.approx(expected, rel=0.01)
