"""The generated blocks of README.md and models/EXPERIMENTS.md are the ones their sources give: the card's
figures, the bench's results and the package's modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.core.card import ModelCard
from pneumo.integrations import docs


@pytest.mark.parametrize("name", list(docs.BLOCKS))
def test_generated_block_equals_its_source(name: str) -> None:
    assert docs.current(name) is not None, f"{docs.BLOCKS[name][0]} has no '{name}' block"
    assert docs.current(name) == docs.expected(name), "run: python -m pneumo docs"


def test_model_table_quotes_the_card() -> None:
    """A card written here with figures of its own: each lands in its row, rounded as the row says."""
    card = ModelCard(
        name="m",
        architecture="shift_cnn",
        threshold=0.123456,
        threshold_rule="out-of-fold recall 0.97",
        validation={
            "n": 5216,
            "roc_auc": 0.98765,
            "sensitivity": 0.9712,
            "specificity": 0.8049,
            "accuracy": 0.9234,
            "bootstrap_95": {"roc_auc": {"low": 0.981, "high": 0.99349}},
            "operating_point": {
                "sensitivity_trusted": 0.9751,
                "trusted_positives": 3500,
                "all_positives": 3875,
                "bootstrap_95": {"specificity": {"low": 0.7777, "high": 0.8333}},
            },
        },
        training={"seconds": 5400, "device": "CPU"},
    )
    lines = docs.model_table(card).splitlines()
    assert lines[0] == "Threshold **0.1235**: out-of-fold recall 0.97."
    assert "| figures out of fold (n = 5,216) | value | 95 % interval (patient bootstrap) |" in lines
    assert "| ROC AUC | 0.9877 | 0.9810–0.9935 |" in lines
    assert "| sensitivity, trusted pneumonias (3500) | 0.975 | —–— |" in lines
    assert "| sensitivity, every pneumonia (3875) | 0.971 | —–— |" in lines
    assert "| specificity | 0.805 | 0.778–0.833 |" in lines
    assert "| accuracy | 0.923 | |" in lines
    assert lines[-1] == "Training: 90 min in all on CPU."


def test_bench_table_quotes_the_results() -> None:
    results = {
        "date": "2026-01-02T03:04:05",
        "cpu": {"model": "Some CPU"},
        "cpu_count": 2,
        "model_forward_gflops": 0.5,
        "peak": {"ceiling_gflops": 100.0, "gflops": 90.0, "how": "2 cores"},
        "gemm_best_gflops": 100.0,
        "headline": {"batch_predict_images_per_s": 123.4567, "predict_latency_ms_p50": 8.0},
        "spread": {"batch_predict_images_per_s": [120.0, 125.5]},
    }
    lines = docs.bench_table(results).splitlines()
    assert lines[0].startswith("`make bench`, 2026-01-02, Some CPU (2 cores), model 0.5 GFLOP per film")
    assert lines[-2:] == [
        "| `batch_predict_images_per_s` | 123.457 | [120.000, 125.500] |",
        "| `predict_latency_ms_p50` | 8.000 | — |",
    ]


def test_module_map_lists_every_module_by_subpackage(tmp_path: Path) -> None:
    """A package made here: a module at the top level, a subpackage with a module, and a subpackage inside
    that. Each module is listed once under its top subpackage with its docstring's first line, a wrapped one
    put back on one line; a bar in a docstring is escaped so it stays in its cell."""
    pkg = tmp_path / "toy"
    (pkg / "sub" / "deep").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The toy package."""\n')
    (pkg / "cli.py").write_text('"""Command line:\nwrapped | split.\n\nDetails not listed."""\nX = 1\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "alpha.py").write_text("'''Alpha things.'''\n")
    (pkg / "sub" / "deep" / "__init__.py").write_text('"""Deep package."""\n')
    (pkg / "sub" / "deep" / "beta.py").write_text('# a comment, not a docstring\n"""Beta."""\n')
    (pkg / "notes.txt").write_text("not a module")
    assert docs.module_map(pkg) == "\n".join(
        [
            "**`toy`** (top level)",
            "",
            "| module | what it holds |",
            "| --- | --- |",
            "| `toy` | The toy package. |",
            "| `toy.cli` | Command line: wrapped \\| split. |",
            "",
            "**`toy.sub`**",
            "",
            "| module | what it holds |",
            "| --- | --- |",
            "| `toy.sub` | (no docstring) |",
            "| `toy.sub.alpha` | Alpha things. |",
            "| `toy.sub.deep` | Deep package. |",
            "| `toy.sub.deep.beta` | Beta. |",
        ]
    )


def test_readme_module_map_names_modules_of_every_layer() -> None:
    block = docs.current("module-map") or ""
    for row in (
        "| `pneumo.evaluation.metrics` | Metrics at a threshold, curves, calibration, threshold choice, and "
        "evaluation of a labelled folder. |",
        "| `pneumo.data.decode` | Decode X-ray files (PNG, JPEG, BMP, TIFF, DICOM) into a 2-D float32 image in "
        "[0, 1]. |",
        "| `pneumo.cli.reading` | Commands that read films with a model: evaluate, predict, calibrate. |",
    ):
        assert row in block.splitlines(), row
    for group in ("app", "cli", "core", "data", "evaluation", "integrations", "model", "training"):
        assert f"**`pneumo.{group}`**" in block.splitlines(), group
    assert "| `pneumo.integrations.pacs.client` |" in block  # a subpackage's subpackage, in its parent's table


def test_framing_table_quotes_each_zoom_and_the_caution() -> None:
    card = ModelCard.default("m")
    row = {
        "family": "zoom",
        "sensitivity": 0.97,
        "specificity": 0.9,
        "flagged_fraction": 0.7,
        "roc_auc": 0.99,
        "sensitivity_95": {"low": 0.95, "high": 0.98},
        "specificity_95": {"low": 0.85, "high": 0.93},
    }
    card.shift_checks["framing"] = {
        "how": "12 films",
        "cautions": ["framing: specificity 0.60 at zoom 1.3×"],
        "conditions": [
            {**row, "zoom": 1.3, "specificity": 0.6},
            {**row, "zoom": 0.8},
            {"family": "shift", "zoom": 1.0},
        ],
    }
    lines = docs.framing_table(card)
    assert lines[1] == "Framing sweep: 12 films."
    body = [line for line in lines if line.startswith("| 0.8× |") or line.startswith("| 1.3× |")]
    assert body == [
        "| 0.8× | 0.970 (0.950–0.980) | 0.900 (0.850–0.930) | 0.700 | 0.9900 |",
        "| 1.3× | 0.970 (0.950–0.980) | 0.600 (0.850–0.930) | 0.700 | 0.9900 |",
    ]
    assert lines[-1] == "Framing caution: framing: specificity 0.60 at zoom 1.3×"
    card.shift_checks["framing"]["cautions"] = []
    assert docs.framing_table(card)[-1].startswith("No framing caution")
    assert docs.framing_table(ModelCard.default("bare")) == []
