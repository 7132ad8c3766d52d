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


def test_predict_keeps_its_json_contract_with_a_broken_dicom_in_the_batch(tiny_run: Path, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=1, size=64)
    good = next((data / "PNEUMONIA").iterdir())
    twin = tmp_path / "other" / good.name  # the same file name in another folder
    twin.parent.mkdir()
    shutil.copy(next((data / "NORMAL").iterdir()), twin)
    from tests.test_imaging import _dicom, _ramp

    import pydicom
    import io

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    ds.PixelData = ds.PixelData[:100]  # the header promises 64×64 pixels the file does not hold
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    out = _cli("predict", "--model", str(tiny_run), "--json", "--cam", str(tmp_path / "cams"), str(good), str(bad), str(twin))
    results = json.loads(out.stdout)
    assert out.returncode == 2 and len(results) == 3
    assert results[1]["probability"] is None and "bad.dcm" in results[1]["error"]
    assert results[0]["probability"] is not None and results[2]["probability"] is not None
    assert all(isinstance(r["warnings"], list) for r in results)
    assert len(list((tmp_path / "cams").iterdir())) == 2  # two inputs with one stem: two files
    assert "cuInit" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("threshold", ["NaN", "5", '"high"', "null"])
def test_a_bad_card_threshold_is_refused_with_one_line(tiny_run: Path, tmp_path: Path, threshold: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = (run / "card.json").read_text()
    card = json.loads(card)
    (run / "card.json").write_text(json.dumps(card).replace(json.dumps(card["threshold"]), threshold, 1))
    out = _cli("predict", "--model", str(run), "--json", str(ROOT / "data" / "samples" / "NORMAL" / "IM-0152-0001.jpeg"))
    assert out.returncode == 2 and "card.json" in out.stderr and "threshold" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_user_errors_exit_2_with_one_line(tiny_run: Path, tmp_path: Path) -> None:
    sample = str(ROOT / "data" / "samples" / "NORMAL" / "IM-0152-0001.jpeg")
    (tmp_path / "afile").write_text("x")
    for args in (["predict", "--model", str(tiny_run), "--threshold", "5", sample],
                 ["train", "--data", str(tmp_path), "--epochs", "0", "--out", str(tmp_path / "r")],
                 ["train", "--data", str(tmp_path), "--batch-size", "0", "--out", str(tmp_path / "r")],
                 ["train", "--data", str(tmp_path), "--out", str(tmp_path / "afile")],
                 ["evaluate", "--model", str(tmp_path / "afile"), "--data", str(tmp_path), "--out", str(tmp_path / "r.json")]):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, (args, out.stderr)


def test_evaluate_record_appends_an_external_evaluation(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = make_folder(tmp_path / "d", n_per_class=6, size=64, seed=11)
    for name in ("first", "second"):
        out = _cli("evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "r.json"), "--record", name)
        assert out.returncode == 0, out.stderr
    from pneumo.card import ModelCard

    evaluations = ModelCard.read(run / "card.json").external_evaluations
    assert [e["name"] for e in evaluations] == ["first", "second"]
    assert evaluations[0]["n"] == 12 and len(evaluations[0]["file_list_sha256_16"]) == 16 and "roc_auc" in evaluations[0]
