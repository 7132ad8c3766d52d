"""The deployment files agree with pyproject.toml."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _names(specs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=\[ ;]", s.strip(), maxsplit=1)[0].lower() for s in specs if s.strip() and not s.startswith("#")}


def test_cloud_requirements_match_pyproject_with_cpu_tensorflow() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    cloud = _names((ROOT / "requirements.txt").read_text().splitlines())
    assert cloud == (runtime - {"tensorflow"}) | {"tensorflow-cpu"}


def test_shipped_model_files_present_and_small() -> None:
    for name in ("model.keras", "model.onnx", "gradcam.onnx", "card.json", "val_predictions.csv", "history.json",
                 "checks.json", "ood.npz", "image_hashes.json", "EXPERIMENTS.md"):
        assert (ROOT / "models" / name).exists(), name
    assert (ROOT / "models" / "model.keras").stat().st_size <= 30 * 2**20


def test_samples_carry_attribution() -> None:
    text = (ROOT / "data" / "samples" / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in text and "10.1016/j.cell.2018.02.010" in text
    assert len(list((ROOT / "data" / "samples").glob("*/*.jpeg"))) == 48
