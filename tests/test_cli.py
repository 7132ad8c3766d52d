from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_TRAIN, make_folder


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "pneumo", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_predict_json_contract_and_exit_status(tiny_run: Path, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=1, size=64)
    good = next((data / "PNEUMONIA").iterdir())
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"%PDF-1.4 definitely a document")
    out = _cli("predict", "--model", str(tiny_run / "model.keras"), "--json", "--cam", str(tmp_path / "cams"), str(good), str(bad))
    assert out.returncode == 2, out.stderr
    results = json.loads(out.stdout)
    assert [set(r) >= {"path", "probability", "prediction", "threshold", "error"} for r in results] == [True, True]
    ok, rejected = results
    assert 0.0 <= ok["probability"] <= 1.0 and ok["prediction"] in ("NORMAL", "PNEUMONIA") and ok["error"] is None
    assert rejected["probability"] is None and "PDF" in rejected["error"] and "fake.png" in rejected["error"]
    assert (tmp_path / "cams" / f"{good.stem}_gradcam.png").read_bytes().startswith(b"\x89PNG")
    only_good = _cli("predict", "--model", str(tiny_run / "model.keras"), "--json", str(good))
    assert only_good.returncode == 0


def test_evaluate_uses_card_threshold(tiny_run: Path, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=6, size=64, seed=9)
    out = _cli("evaluate", "--model", str(tiny_run / "model.keras"), "--data", str(data), "--out", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("n", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold", "confusion"):
        assert key in report
    assert report["n"] == 12
    assert report["threshold"] == json.loads((tiny_run / "card.json").read_text())["threshold"]


def test_summarize_json_and_bad_path(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=3)
    out = _cli("summarize", str(data), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["n_images"] == 6
    missing = _cli("summarize", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason=f"shared training data not found at {SHARED_TRAIN}")
def test_integration_on_real_xrays(tmp_path: Path) -> None:
    """One epoch on ~200 real images, then evaluate and predict through the CLI."""
    subset = tmp_path / "subset"
    for cls in ("NORMAL", "PNEUMONIA"):
        (subset / cls).mkdir(parents=True)
        for path in sorted((SHARED_TRAIN / cls).iterdir())[:100]:
            shutil.copy(path, subset / cls / path.name)
    run = tmp_path / "run"
    out = _cli("train", "--data", str(subset), "--epochs", "1", "--image-size", "128", "--out", str(run))
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    ev = _cli("evaluate", "--model", str(run / "model.keras"), "--data", str(subset), "--out", str(tmp_path / "r.json"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 200
    sample = next((subset / "PNEUMONIA").iterdir())
    pr = _cli("predict", "--model", str(run / "model.keras"), "--json", str(sample))
    assert pr.returncode == 0 and 0.0 <= json.loads(pr.stdout)[0]["probability"] <= 1.0
