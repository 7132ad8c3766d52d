from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pneumo import runs


def test_atomic_json_leaves_no_temporary_files(tmp_path: Path) -> None:
    runs.atomic_write_json(tmp_path / "a.json", {"x": 1})
    runs.atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_metrics_reader_skips_a_half_written_line(tmp_path: Path) -> None:
    runs.append_jsonl(tmp_path / "metrics.jsonl", {"type": "epoch", "epoch": 1, "val_auc": 0.8})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "epoch", "epo')
    assert runs.read_metrics(tmp_path) == [{"type": "epoch", "epoch": 1, "val_auc": 0.8}]


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
    from pneumo.train import TrainConfig

    busy = tmp_path / "busy"
    runs.atomic_write_json(busy / "config.json", {"model": "shift_cnn"})
    runs.write_status(busy, "running", pid=os.getpid(), started="2026-01-01")
    import pytest

    with pytest.raises(runs.RunFolderError, match="at most 1"):
        runs.launch(TrainConfig(data=str(tmp_path)), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_list_runs_and_info(tmp_path: Path) -> None:
    for name, aucs in (("r1", [0.7, 0.9, 0.8]), ("r2", [])):
        d = tmp_path / name
        runs.atomic_write_json(d / "config.json", {"model": "compact_cnn", "epochs": 3})
        runs.write_status(d, "finished", started=f"2026-01-0{name[-1]}")
        for i, auc in enumerate(aucs):
            runs.append_jsonl(d / "metrics.jsonl", {"type": "epoch", "epoch": i + 1, "val_auc": auc, "seconds": 2.0})
    (tmp_path / "not-a-run").mkdir()
    listed = runs.list_runs(tmp_path)
    assert [r.name for r in listed] == ["r2", "r1"]
    r1 = listed[1]
    assert r1.best_val_auc == 0.9 and r1.epochs_done == 3 and r1.duration_s == 6.0 and not r1.has_model


def test_request_stop_creates_stop_file(tmp_path: Path) -> None:
    assert not runs.stop_requested(tmp_path)
    runs.request_stop(tmp_path)
    assert runs.stop_requested(tmp_path)
