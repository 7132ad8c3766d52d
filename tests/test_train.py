from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo import runs
from pneumo.models import load_model
from pneumo.train import TrainConfig, train
from tests.conftest import make_folder


def test_run_directory_holds_everything(tiny_run: Path) -> None:
    for name in ("config.json", "metrics.jsonl", "status.json", "model.keras", "card.json", "val_predictions.csv", "history.json"):
        assert (tiny_run / name).exists(), name
    status = json.loads((tiny_run / "status.json").read_text())
    assert status["state"] == "finished" and status["device"].startswith(("CPU", "1×", "2×"))
    records = runs.read_metrics(tiny_run)
    epoch = runs.epochs_of(records)[0]
    for key in ("loss", "accuracy", "auc", "recall", "precision", "val_loss", "val_auc", "val_recall", "val_precision", "lr", "seconds"):
        assert key in epoch, key
    progress = [r for r in records if r["type"] == "progress"]
    assert progress and progress[-1]["batch"] == progress[-1]["batches"]
    assert not list(tiny_run.glob(".tmp-*"))


def test_card_threshold_reaches_target_recall_on_validation(tiny_run: Path) -> None:
    card = json.loads((tiny_run / "card.json").read_text())
    preds = pd.read_csv(tiny_run / "val_predictions.csv")
    pos = preds[preds.label == 1]
    assert (pos.probability >= card["threshold"]).mean() >= 0.98
    assert card["validation_metrics"]["n"] == len(preds)
    assert card["input_size"] == 64 and card["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert card["training_data"]["train_patients"] > 0 and len(card["training_data"]["file_list_sha256_16"]) == 16
    loaded = load_model(tiny_run / "model.keras")
    assert loaded.threshold == card["threshold"]
    summary = json.loads((tiny_run / "data_summary.json").read_text())
    assert summary["val_images"] == len(preds)
    assert summary["train_images"] + summary["val_images"] == summary["images"]


def test_stop_file_stops_with_a_readable_model(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=40, size=48)
    run = tmp_path / "run"
    run.mkdir()
    runs.request_stop(run)  # present from the start: the run stops after its first batch
    config = TrainConfig(data=str(data), image_size=48, epochs=50, batch_size=8, augment=False, val_fraction=0.25)
    card = train(config, run)
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert card["epochs_run"] == 1
    progress = [r for r in runs.read_metrics(run) if r["type"] == "progress"]
    assert progress[0]["batch"] < progress[0]["batches"]  # stopped inside the epoch
    model = load_model(run / "model.keras")
    assert model.predict(np.random.rand(48, 48).astype("float32")).shape == (1,)


def test_failure_is_recorded(tmp_path: Path) -> None:
    with pytest.raises(Exception):
        train(TrainConfig(data=str(tmp_path / "nowhere"), epochs=1), tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "no such file" in status["error"]


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="colour"):
        TrainConfig.from_dict({"colour": "blue"})


def test_ensemble_averages_members_on_their_shared_split(tiny_run: Path, tmp_path: Path) -> None:
    from pneumo import explain
    from pneumo.train import ensemble

    config = TrainConfig.from_dict({**json.loads((tiny_run / "config.json").read_text()), "seed": 1, "split_seed": 0})
    other = tmp_path / "other"
    train(config, other)
    card = ensemble([tiny_run, other], tmp_path / "ens")
    preds = pd.read_csv(tmp_path / "ens" / "val_predictions.csv").set_index("path")
    members = [pd.read_csv(r / "val_predictions.csv").set_index("path") for r in (tiny_run, other)]
    mean = (members[0]["probability"] + members[1]["probability"]) / 2
    np.testing.assert_allclose(preds["probability"], mean.loc[preds.index], atol=1e-5)
    pos = preds[preds.label == 1]
    assert (pos.probability >= card["threshold"]).mean() >= 0.98
    loaded = load_model(tmp_path / "ens")
    img = np.random.default_rng(0).random((64, 64)).astype("float32")
    heat = explain.gradcam(loaded, img)  # the target layer sits inside a nested member
    assert heat.shape == (64, 64)

    config = TrainConfig.from_dict({**config.__dict__, "split_seed": 5})
    train(config, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="split"):
        ensemble([tiny_run, tmp_path / "elsewhere"], tmp_path / "bad")
