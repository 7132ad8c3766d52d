from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumo.core import files
from pneumo.training import metrics_log, runs


def test_atomic_json_leaves_no_temporary_files(tmp_path: Path) -> None:
    files.atomic_write_json(tmp_path / "a.json", {"x": 1})
    files.atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_metrics_reader_skips_a_half_written_line(tmp_path: Path) -> None:
    files.append_jsonl(tmp_path / "metrics.jsonl", {"type": "epoch", "epoch": 1, "val_auc": 0.8})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "epoch", "epo')
    assert metrics_log.read_metrics(tmp_path) == [{"type": "epoch", "epoch": 1, "val_auc": 0.8}]


def test_status_of_a_vanished_process_reads_failed(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    runs.write_status(tmp_path, "running", pid=proc.pid)
    old = 1_000_000_000
    os.utime(tmp_path / "status.json", (old, old))
    status = runs.read_status(tmp_path)
    assert status["state"] == "failed" and "ended without reporting" in status["error"]
    runs.write_status(tmp_path, "running", pid=os.getpid())
    assert runs.read_status(tmp_path)["state"] == "running"


def test_a_run_that_stops_beating_reads_failed(tmp_path: Path) -> None:
    runs.write_status(tmp_path, "running", pid=os.getpid())  # alive here, but silent for too long
    old = os.path.getmtime(tmp_path / "status.json") - runs.HEARTBEAT_DEAD_S - 60
    os.utime(tmp_path / "status.json", (old, old))
    status = runs.read_status(tmp_path)
    assert status["state"] == "failed" and "no heartbeat" in status["error"]


def test_launch_refuses_a_second_concurrent_run(tmp_path: Path) -> None:
    from pneumo.training.job import TrainConfig

    busy = tmp_path / "busy"
    files.atomic_write_json(busy / "config.json", {"model": "shift_cnn"})
    runs.write_status(busy, "running", pid=os.getpid(), started="2026-01-01")
    import pytest

    with pytest.raises(runs.RunFolderError, match="at most 1"):
        runs.launch(TrainConfig(data=str(tmp_path)), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_list_runs_and_info(tmp_path: Path) -> None:
    for name, aucs in (("r1", [0.7, 0.9, 0.8]), ("r2", [])):
        d = tmp_path / name
        files.atomic_write_json(d / "config.json", {"model": "compact_cnn", "epochs": 3})
        runs.write_status(d, "finished", started=f"2026-01-0{name[-1]}")
        for i, auc in enumerate(aucs):
            files.append_jsonl(d / "metrics.jsonl", {"type": "epoch", "epoch": i + 1, "val_auc": auc, "seconds": 2.0})
    (tmp_path / "not-a-run").mkdir()
    listed = runs.list_runs(tmp_path)
    assert [r.name for r in listed] == ["r2", "r1"]
    r1 = listed[1]
    assert r1.best_val_auc == 0.9 and r1.epochs_done == 3 and r1.duration_s == 6.0 and not r1.has_model


def test_request_stop_creates_stop_file(tmp_path: Path) -> None:
    assert not runs.stop_requested(tmp_path)
    runs.request_stop(tmp_path)
    assert runs.stop_requested(tmp_path)


def _run(root: Path, name: str, state: str = "finished", aucs: tuple = (0.7, 0.9), model: bool = True) -> Path:
    d = root / name
    files.atomic_write_json(d / "config.json", {"model": "compact_cnn", "epochs": 3})
    runs.write_status(d, state, started=f"2026-01-01T00:00:{len(name):02d}")
    for i, auc in enumerate(aucs):
        files.append_jsonl(
            d / "metrics.jsonl", {"type": "epoch", "epoch": i + 1, "epochs": 3, "val_auc": auc, "seconds": 2.0}
        )
    if model:
        (d / "model.keras").write_bytes(b"weights")
    return d


def test_one_bad_file_marks_only_its_own_run_damaged(tmp_path: Path) -> None:
    from pneumo.app.settings import AppSettings

    _run(tmp_path, "good")
    _run(tmp_path, "number-line")
    with open(tmp_path / "number-line" / "metrics.jsonl", "a") as fh:
        fh.write("42\n")  # a bare number between records
        fh.write(json.dumps({"type": "epoch", "epoch": 3, "epochs": 3, "val_auc": 0.95, "seconds": 2.0}) + "\n")
    _run(tmp_path, "text-auc")
    files.append_jsonl(tmp_path / "text-auc" / "metrics.jsonl", {"type": "epoch", "epoch": 3, "val_auc": "high"})
    (_run(tmp_path, "status-list") / "status.json").write_text("[1, 2]")
    (_run(tmp_path, "text-pid") / "status.json").write_text(json.dumps({"state": "running", "pid": "12x"}))
    (_run(tmp_path, "config-list") / "config.json").write_text('["compact_cnn"]')
    (_run(tmp_path, "deep-status") / "status.json").write_text("[" * 100_000 + "]" * 100_000)

    listed = {r.name: r for r in runs.list_runs(tmp_path)}
    assert set(listed) == {"good", "number-line", "text-auc", "status-list", "text-pid", "config-list", "deep-status"}
    assert listed["good"].damaged is None and listed["good"].best_val_auc == 0.9 and listed["good"].state == "finished"
    # Bad metrics lines are skipped and said; the run keeps its state and its good records.
    assert listed["number-line"].state == "finished" and listed["number-line"].epochs_done == 3
    assert listed["number-line"].best_val_auc == 0.95 and "line 3" in listed["number-line"].damaged
    assert listed["text-auc"].best_val_auc == 0.9 and "val_auc must be a number" in listed["text-auc"].damaged
    for name, reason in (
        ("status-list", "status.json: a JSON list"),
        ("text-pid", "pid must be a process number"),
        ("config-list", "config.json: a JSON list"),
        ("deep-status", "nested too deeply"),
    ):
        assert listed[name].state == "damaged" and reason in listed[name].damaged, (name, listed[name].damaged)
    assert runs.kill(tmp_path / "text-pid") is False  # a text pid is never signalled
    choices = AppSettings(runs_dir=tmp_path, models_dir=tmp_path / "none").model_choices()
    assert sorted(Path(p).parent.name for p in choices.values()) == ["good", "number-line", "text-auc"]
    assert runs.active_runs(tmp_path) == []  # a damaged "running" status does not block a new run
    assert listed["good"].config == {"model": "compact_cnn", "epochs": 3} and listed["config-list"].config == {}


def test_a_run_folder_linking_outside_the_runs_folder_is_not_read(tmp_path: Path) -> None:
    outside = _run(tmp_path / "elsewhere", "secret")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(outside, target_is_directory=True)
    [info] = runs.list_runs(tmp_path / "runs")
    assert info.state == "damaged" and "outside the runs folder" in info.damaged and not info.has_model
    assert str(outside) not in info.damaged


def test_a_huge_metrics_file_is_read_from_its_end_within_a_bound(tmp_path: Path) -> None:
    import time
    import tracemalloc

    line = (
        json.dumps(
            {
                "type": "progress",
                "epoch": 1,
                "epochs": 2,
                "batch": 1,
                "batches": 9,
                "loss": 0.5,
                "eta_s": 1.0,
                "elapsed_s": 1.0,
                "pad": "x" * 400,
            }
        )
        + "\n"
    )
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.write(line * (48 * 2**20 // len(line)))  # 48 MB of progress lines, then the epoch that matters
        fh.write(json.dumps({"type": "epoch", "epoch": 1, "epochs": 2, "val_auc": 0.8, "seconds": 3.0}) + "\n")
    tracemalloc.start()
    started = time.perf_counter()
    records = metrics_log.read_metrics(tmp_path)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert records.truncated and len(records) < 48 * 2**20 // len(line) and records[-1]["type"] == "epoch"
    assert "only its last" in records.note and "48 MB" in records.note
    assert peak < 200 * 2**20, peak / 2**20  # the whole file parsed would hold ~10× its size
    assert seconds < 5, seconds
    info = runs.run_info(tmp_path)
    assert info.best_val_auc == 0.8 and info.note and info.damaged is None


def test_a_queued_run_whose_pid_is_not_its_training_is_stale_and_stop_clears_it(tmp_path: Path) -> None:
    foreign = subprocess.Popen(["sleep", "60"])
    ours = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "pneumo", "train", "--out", str(tmp_path / "mine")]
    )
    try:
        stale = _run(tmp_path, "stale", state="queued", aucs=(), model=False)
        runs.write_status(stale, "queued", pid=foreign.pid)
        mine = _run(tmp_path, "mine", state="queued", aucs=(), model=False)
        runs.write_status(mine, "queued", pid=ours.pid)
        status = runs.read_status(stale)
        assert status["state"] == "failed" and "stale" in status["error"] and str(foreign.pid) in status["error"]
        assert runs.read_status(mine)["state"] == "queued"  # a real training of this run keeps its place
        assert [r.name for r in runs.active_runs(tmp_path)] == ["mine"]
        assert runs.kill(stale) is False and foreign.poll() is None  # the foreign process is never signalled
        runs.request_stop(stale)
        assert json.loads((stale / "status.json").read_text())["state"] == "stopped"
        assert runs.read_status(stale)["state"] == "stopped" and foreign.poll() is None
    finally:
        foreign.kill()
        ours.kill()


def test_stored_predictions_are_validated_and_kept_inside_the_roots(tmp_path: Path) -> None:
    import threading

    from pneumo.app.settings import AppSettings
    from pneumo.core.predictions import PredictionsError

    root = tmp_path / "data"
    (root / "NORMAL").mkdir(parents=True)
    inside = root / "NORMAL" / "a.png"
    inside.write_bytes(b"png")
    secret = tmp_path / "secret"
    secret.mkdir()
    os.mkfifo(secret / "pipe")  # opening it would block: a reader that opens refused rows hangs here
    (root / "NORMAL" / "link.png").symlink_to(secret / "pipe")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    rows = [
        (inside, 0, 0.1),
        (secret / "pipe", 1, 0.9),
        ("../../../secret/pipe", 1, 0.8),
        (root / "NORMAL" / "link.png", 0, 0.2),
        (f"{root / 'mnist.npz'}::val::3", 1, ""),
        ("/etc/passwd", 0, 0.3),
    ]
    csv = run / "val_predictions.csv"
    csv.write_text("path,label,probability,patient_id\n" + "".join(f"{p},{lab},{pr},x\n" for p, lab, pr in rows))
    cfg = AppSettings(data_roots=[root], runs_dir=tmp_path / "runs", models_dir=tmp_path / "models")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(cfg.stored_predictions(csv)), daemon=True)
    worker.start()
    worker.join(30)
    assert result, "a refused row was opened"
    every, kept, refused = result[0]
    assert len(every) == 6 and refused == 4
    assert kept["path"].tolist() == [str(inside.resolve()), f"{root.resolve() / 'mnist.npz'}::val::3"]
    assert kept["row"].tolist() == [2, 6] and np.isnan(kept["probability"].iloc[1])
    assert cfg.resolve_inside_roots("../../../secret/pipe", base=run) is None
    assert cfg.resolve_inside_roots(inside) == inside.resolve()

    for body, message in (
        ("path,probability\nx,0.5\n", "missing column(s) label"),
        ("path,label,probability\nx,0,0.5\ny,sick,0.5\n", "row 3: label must be 0"),
        ("path,label,probability\nx,0,high\n", "row 2: probability must be a number"),
        ("path,label,probability\nx,0,1.5\n", "row 2: probability must be a number"),
    ):
        csv.write_text(body)
        with pytest.raises(PredictionsError, match=re.escape(message)) as caught:
            cfg.stored_predictions(csv)
        assert str(caught.value).startswith("val_predictions.csv") and str(tmp_path) not in str(caught.value)


def test_a_run_is_labelled_with_the_kept_models_auc_not_its_best_epochs(tmp_path: Path) -> None:
    """A run that keeps its last epoch serves that epoch's model: the table says its AUC (0.9015), beside the
    best epoch's (0.913) that it does not serve; a run that keeps its best says the best."""
    for name, kept in (("last", 3), ("best", 2), ("none", None)):
        d = tmp_path / name
        files.atomic_write_json(d / "config.json", {"model": "compact_cnn", "epochs": 3})
        runs.write_status(d, "finished", started="2026-01-01")
        for epoch, auc in enumerate((0.88, 0.913, 0.9015), start=1):
            record = {"type": "epoch", "epoch": epoch, "val_auc": auc, "seconds": 1.0}
            if epoch == kept:
                record["kept"] = True
            files.append_jsonl(d / "metrics.jsonl", record)
    info = {r.name: r for r in runs.list_runs(tmp_path)}
    assert (info["last"].kept_val_auc, info["last"].best_val_auc) == (0.9015, 0.913)
    assert info["best"].kept_val_auc == 0.913
    assert info["none"].kept_val_auc is None and info["none"].best_val_auc == 0.913
