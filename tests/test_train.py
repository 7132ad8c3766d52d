from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.core import files
from pneumo.model.loading import load_model
from pneumo.training import metrics_log, runs
from pneumo.training.job import TrainConfig, train
from tests.conftest import free_ports, make_folder


def test_run_directory_holds_everything(tiny_run: Path) -> None:
    for name in (
        "config.json",
        "metrics.jsonl",
        "status.json",
        "model.keras",
        "card.json",
        "val_predictions.csv",
        "history.json",
        "checks.json",
    ):
        assert (tiny_run / name).exists(), name
    status = json.loads((tiny_run / "status.json").read_text())
    assert status["state"] == "finished" and status["device"].startswith(("CPU", "1×", "2×"))
    records = metrics_log.read_metrics(tiny_run)
    epoch = metrics_log.epochs_of(records)[0]
    for key in (
        "loss",
        "accuracy",
        "auc",
        "recall",
        "precision",
        "val_loss",
        "val_auc",
        "val_recall",
        "val_precision",
        "lr",
        "seconds",
    ):
        assert key in epoch, key
    progress = [r for r in records if r["type"] == "progress"]
    assert progress and progress[-1]["batch"] == progress[-1]["batches"]
    assert not list(tiny_run.glob(".tmp-*"))


def test_card_records_held_out_figures_and_shift_checks(tiny_run: Path) -> None:
    from pneumo.core.card import ModelCard
    from pneumo.data.transforms import STRESS

    card = ModelCard.read(tiny_run / "card.json")
    preds = pd.read_csv(tiny_run / "val_predictions.csv")
    pos = preds[preds.label == 1]
    assert card.validation["n"] == len(preds) and card.validation["kind"] == "temporal"
    assert card.validation["sensitivity"] == pytest.approx((pos.probability >= card.threshold).mean())
    assert "pooled" in card.threshold_rule
    assert len(card.shift_checks["stress"]["conditions"]) == len(STRESS)
    assert set(card.shift_checks["bootstrap_95"]) >= {"sensitivity", "specificity"}
    figure = card.extra["explanation"]
    assert [r["map"] for r in figure["table"]] == [
        "Grad-CAM (model)",
        "average map",
        "centred blob",
        "random map",
        "flat map",
    ]
    assert figure["n"] == min(48, len(preds)) and figure["threshold"] == card.threshold
    assert card.input_size == 64 and card.class_names == ["NORMAL", "PNEUMONIA"]
    assert card.training_data["train_patients"] > 0 and len(card.training_data["file_list_sha256_16"]) == 16
    loaded = load_model(tiny_run / "model.keras")
    assert loaded.threshold == card.threshold
    summary = json.loads((tiny_run / "data_summary.json").read_text())
    assert summary["val_images"] == len(preds)
    assert summary["train_images"] + summary["val_images"] == summary["images"]


def test_stop_file_stops_with_a_readable_model(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=40, size=48)
    run = tmp_path / "run"
    run.mkdir()
    runs.request_stop(run)  # a stale request from before the run: cleared at its start
    config = TrainConfig(data=str(data), image_size=48, epochs=50, batch_size=8, augmentation="none", val_fraction=0.25)

    def stop_at_first_progress(record: dict) -> None:
        if record["type"] == "progress":
            runs.request_stop(run)

    card = train(config, run, hook=stop_at_first_progress)
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert card.training["epochs_run"] == 1
    progress = [r for r in metrics_log.read_metrics(run) if r["type"] == "progress"]
    assert progress[0]["batch"] < progress[0]["batches"]  # stopped inside the epoch
    model = load_model(run / "model.keras")
    assert model.predict(np.random.rand(48, 48).astype("float32")).shape == (1,)


def test_failure_is_recorded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        train(TrainConfig(data=str(tmp_path / "nowhere"), epochs=1), tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "no such file" in status["error"]


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="colour"):
        TrainConfig.from_dict({"colour": "blue"})


def test_ensemble_averages_members_on_their_shared_split(tiny_run: Path, tmp_path: Path) -> None:
    from pneumo.model import explain
    from pneumo.training.job import ensemble

    config = TrainConfig.from_dict({**json.loads((tiny_run / "config.json").read_text()), "seed": 1, "split_seed": 0})
    other = tmp_path / "other"
    train(config, other)
    card = ensemble([tiny_run, other], tmp_path / "ens")
    preds = pd.read_csv(tmp_path / "ens" / "val_predictions.csv").set_index("path")
    members = [pd.read_csv(r / "val_predictions.csv").set_index("path") for r in (tiny_run, other)]
    mean = (members[0]["probability"] + members[1]["probability"]) / 2
    np.testing.assert_allclose(preds["probability"], mean.loc[preds.index], atol=1e-5)
    assert card.validation["n"] == len(preds) and card.architecture.startswith("ensemble of 2")
    loaded = load_model(tmp_path / "ens")
    img = np.random.default_rng(0).random((64, 64)).astype("float32")
    heat = explain.gradcam(loaded, img)  # the target layer sits inside a nested member
    assert heat.shape == (64, 64)

    with pytest.raises(ValueError, match="one of its members"):
        ensemble([tiny_run, other], other)
    with pytest.raises(ValueError, match="--overwrite"):
        ensemble([tiny_run, other], tmp_path / "ens")

    config = TrainConfig.from_dict({**config.__dict__, "split": "patient", "split_seed": 5})
    train(config, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="split"):
        ensemble([tiny_run, tmp_path / "elsewhere"], tmp_path / "bad")


def test_run_folders_are_never_overwritten_or_shared(tmp_path: Path) -> None:
    import fcntl

    from pneumo.training.runs import RunFolderError, claim

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("years of work")
    with pytest.raises(RunFolderError, match="not a pneumo run"):
        train(TrainConfig(data=str(tmp_path), epochs=1), foreign)
    assert (foreign / "thesis.docx").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        train(TrainConfig(data=str(tmp_path), epochs=1), tmp_path / "file")

    ended = tmp_path / "ended"
    ended.mkdir()
    files.atomic_write_json(ended / "config.json", {})
    runs.write_status(ended, "finished")
    with pytest.raises(RunFolderError, match="--overwrite"):
        with claim(ended):
            pass
    with claim(ended, overwrite=True):
        assert not (ended / "status.json").exists()

    shipped = tmp_path / "models"  # run-file names, but no run status: someone's model folder
    shipped.mkdir()
    (shipped / "model.keras").write_bytes(b"precious")
    with pytest.raises(RunFolderError, match="no run status"):
        with claim(shipped, overwrite=True):
            pass
    assert (shipped / "model.keras").read_bytes() == b"precious"

    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / runs.LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process holds the folder
        with pytest.raises(RunFolderError, match="another training"):
            with claim(busy):
                pass


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"model": "gpt"}, "model"),
        ({"learning_rate": float("nan")}, "finite"),
    ],
)
def test_arguments_are_checked_before_any_work(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(data=str(tmp_path), **change), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_single_class_data_is_refused_before_training(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=6, size=48)
    import shutil

    shutil.rmtree(data / "NORMAL")
    with pytest.raises(ValueError, match="both classes"):
        train(TrainConfig(data=str(data), image_size=48, epochs=1), tmp_path / "run")
    assert runs.read_status(tmp_path / "run")["state"] == "failed"


def test_two_workers_train_one_model_over_tf_config(tmp_path: Path) -> None:
    """Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy): each trains on its own half of the
    images, every step averages both gradients and pools both batch-norm statistics, so both end with the same
    model; the chief checks it and writes its card. The same config trained in one process is the same
    training: same steps, schedule, metric names and meanings, and figures within sampling noise."""
    import subprocess
    import sys
    import time

    import keras

    from tests.conftest import ROOT

    data = make_folder(tmp_path / "d", n_per_class=24, size=48)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    config = TrainConfig(
        data=str(data),
        model="compact_cnn",
        image_size=48,
        epochs=2,
        batch_size=8,
        val_fraction=0.25,
        augmentation="basic",
    )
    procs, logs = [], [tmp_path / f"worker{i}.log" for i in range(2)]
    for i in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            "CUDA_VISIBLE_DEVICES": "",
        }
        cmd = [
            sys.executable,
            "-m",
            "pneumo",
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / f"worker{i}"),
            *" ".join(config.flags()).split(),
        ]
        # Output to files, not pipes: a worker blocked on a full pipe nobody reads stalls the other in its
        # next collective, and so the whole cluster.
        with logs[i].open("w") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        train(config, tmp_path / "one")  # the same config in this process, while the workers start
        deadline = time.monotonic() + 300  # about 60-100 s each on two cores, the in-process run included
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            p.kill()
            p.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + "\n-----\n" + outputs[1][-3000:]
    # The workers ended together: none left while the chief was still checking the model, which the chief's
    # coordination service reports as a crashed task and answers by aborting the cluster's collectives.
    assert not [o for o in outputs if "stopped sending heartbeats" in o], outputs[0][-3000:]

    summaries = [json.loads((tmp_path / f"worker{i}" / "data_summary.json").read_text()) for i in range(2)]
    assert [s["worker_index"] for s in summaries] == [0, 1] and all(s["workers"] == 2 for s in summaries)
    shares = [s["worker_train_images"] for s in summaries]
    assert min(shares) > 0 and sum(shares) == summaries[0]["train_images"]  # each worker learned from its own half
    models = [keras.models.load_model(tmp_path / f"worker{i}" / "model.keras") for i in range(2)]
    for a, b in zip(*[[w.numpy() for w in m.weights] for m in models]):
        # One model, batch-norm running statistics included: gradients and batch statistics were shared at
        # every step (alone, each would have followed its own half of the images to different weights).
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert json.loads((tmp_path / "worker0" / "card.json").read_text())["validation"]["n"] > 0

    many, one = (metrics_log.read_metrics(tmp_path / name) for name in ("worker0", "one"))
    epochs = [metrics_log.epochs_of(r) for r in (many, one)]
    assert [len(e) for e in epochs] == [2, 2]
    # The same optimiser steps: batch_size is the whole step's images, shared by the workers.
    steps = [
        {
            (
                r["epoch"],
                r["batches"],
                max(p["batch"] for p in recs if p["type"] == "progress" and p["epoch"] == r["epoch"]),
            )
            for r in recs
            if r["type"] == "progress"
        }
        for recs in (many, one)
    ]
    assert steps[0] == steps[1] == {(1, 5, 5), (2, 5, 5)}, steps
    # Same steps, same schedule: the learning rate after each epoch is the same number.
    assert [e["lr"] for e in epochs[0]] == [e["lr"] for e in epochs[1]]
    assert [set(e) - {"best", "kept"} for e in epochs[0]] == [set(e) - {"best", "kept"} for e in epochs[1]]
    for name, run_epochs in zip(("worker0", "one"), epochs):
        # val_auc is the card's exact ROC AUC of the same films in both (with keep=last the card's model is the
        # last epoch's), not Keras' bucketed estimate. Allowed: one positive-negative pair (1/(P·N)), since
        # the card scores with the ONNX export, which may order a near-tie differently.
        card = json.loads((tmp_path / name / "card.json").read_text())
        pairs = card["validation"]["confusion"]["tp"] + card["validation"]["confusion"]["fn"]
        pairs *= card["validation"]["n"] - pairs
        assert run_epochs[-1]["val_auc"] == pytest.approx(card["validation"]["roc_auc"], abs=1 / pairs + 1e-9)
    # Same initial weights (same seed), the same weighted, smoothed loss averaged over a step's images: the
    # first epoch's training loss differs only by which images each step drew (measured: 0.87 and 0.90).
    assert epochs[0][0]["loss"] == pytest.approx(epochs[1][0]["loss"], rel=0.15)
    # 12 held-out films (one pair moves the AUC by 1/36) and 10 steps, after which the batch-norm running
    # statistics (momentum 0.99) are still mostly their initial values: two orders of the same images give
    # held-out AUCs that differ by chance (measured: 0.72 and 0.69). 0.25 only catches a figure of another kind.
    assert abs(epochs[0][-1]["val_auc"] - epochs[1][-1]["val_auc"]) <= 0.25


def test_an_ensemble_frames_films_as_its_members_learned_them(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from pneumo.core.card import ModelCard
    from pneumo.data.collection import read_item
    from pneumo.training.job import ensemble

    runs = [Path(shutil.copytree(tiny_run, tmp_path / name)) for name in ("a", "b")]
    for run in runs:  # the members' cards say they were trained on films cropped to the lungs
        card = ModelCard.read(run / "card.json")
        card.extra["framing"] = "lungs"
        card.write(run / "card.json")
    made = ensemble(runs, tmp_path / "ens")
    assert made.extra["framing"] == "lungs" and "cropped to its lung field" in made.extra["input"]
    loaded = load_model(tmp_path / "ens")
    assert loaded.framing == "lungs"
    # Its stored figures come from framed films: the served model, which frames them, reproduces them.
    preds = pd.read_csv(tmp_path / "ens" / "val_predictions.csv")
    served = loaded.predict([read_item(p) for p in preds["path"]])
    np.testing.assert_allclose(served, preds["probability"], atol=1e-5)

    card = ModelCard.read(runs[1] / "card.json")
    card.extra["framing"] = "none"
    card.write(runs[1] / "card.json")
    with pytest.raises(ValueError, match=r"different framings \(lungs, none\)"):
        ensemble(runs, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()  # refused before the output folder is claimed
