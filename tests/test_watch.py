"""Watching training runs (pneumo.training.watch): progress and ETA in words, the runs table's rows, which run a
visitor may activate, and run files read again only when they change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pneumo.core import files
from pneumo.training import watch
from pneumo.training.runs import RunInfo


def _run(path: Path, state: str = "finished", has_model: bool = True, **extra: object) -> RunInfo:
    values: dict = dict(
        path=path,
        name=path.name,
        state=state,
        model="compact_cnn",
        best_val_auc=0.9,
        kept_val_auc=0.85,
        epochs_done=3,
        epochs=3,
        duration_s=90.0,
        started="2026-01-01T00:00:00",
        has_model=has_model,
    )
    values.update(extra)
    return RunInfo(**values)


def test_a_run_file_is_read_again_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real = files.read_json_object
    monkeypatch.setattr(files, "read_json_object", lambda path: reads.append(Path(path)) or real(path))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 3}))
    assert watch.run_config(tmp_path) == {"epochs": 3}
    first = watch.run_config(tmp_path)
    first["epochs"] = 99  # the caller's copy: the next reader still gets the file's value
    assert watch.run_config(tmp_path) == {"epochs": 3}
    assert len(reads) == 1
    config.write_text(json.dumps({"epochs": 12}))
    os.utime(config, ns=(1, 1))  # even a change within one clock tick is seen: the time differs
    assert watch.run_config(tmp_path) == {"epochs": 12}
    assert len(reads) == 2
    assert watch.run_config(tmp_path / "missing") == {}
    config.write_text("[1, 2]")  # not an object
    assert watch.run_config(tmp_path) == {}


def test_the_validation_size_is_a_count_or_unknown(tmp_path: Path) -> None:
    summary = tmp_path / "data_summary.json"
    assert watch.val_size(tmp_path) is None
    for i, (value, expected) in enumerate(((7, 7), (True, None), ("7", None), (7.0, None))):
        summary.write_text(json.dumps({"val_images": value}))
        os.utime(summary, ns=(i + 1, i + 1))  # a time of its own each: read again
        assert watch.val_size(tmp_path) == expected, value
    assert watch.on_n(1234) == "(n = 1,234 val films)"
    assert watch.on_n(None) == "(n unknown)"


def _progress(epoch: int, batch: int, epochs: int = 2, batches: int = 40) -> dict:
    return {"type": "progress", "epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches, "loss": 0.7,
            "eta_s": 270.0}  # fmt: skip


def test_the_eta_is_said_once_steps_have_been_measured() -> None:
    # 1 of 80 batches done; the first steps include tracing.
    assert watch.training_progress(_progress(1, 1)) == (
        1 / 80,
        "epoch 1/2 · batch 1/40 · loss 0.700 · ETA after a few steps",
    )
    assert watch.training_progress(_progress(1, 9))[1].endswith("ETA after a few steps")
    assert watch.training_progress(_progress(1, 10)) == (10 / 80, "epoch 1/2 · batch 10/40 · loss 0.700 · ETA 4.5 min")
    assert watch.training_progress(_progress(2, 1)) == (41 / 80, "epoch 2/2 · batch 1/40 · loss 0.700 · ETA 4.5 min")
    assert watch.training_progress(_progress(3, 40))[0] == 1.0  # a record past the end fills the bar, no more
    assert watch.training_progress(_progress(1, 0, batches=0))[0] == 0.0  # nothing to divide by: an empty bar


def test_the_newest_progress_record_is_the_one_shown() -> None:
    records = [{"type": "epoch", "epoch": 1}, _progress(1, 5), {"type": "epoch"}, _progress(1, 7), {"type": "epoch"}]
    assert watch.latest_progress(records) == _progress(1, 7)
    assert watch.latest_progress([{"type": "epoch"}]) is None


def test_a_phase_bar_shows_only_before_and_after_training() -> None:
    assert watch.phase_progress("running", {"phase": "checking the model", "phase_done": 3, "phase_total": 12}) == (
        0.25,
        "checking the model · 3/12",
    )
    assert watch.phase_progress("running", {"phase": "preparing data"}) == (0.0, "preparing data …")
    assert watch.phase_progress("running", {"phase": "training", "phase_total": 3}) is None
    assert watch.phase_progress("running", {"phase": "done"}) is None
    assert watch.phase_progress("running", {}) is None
    assert watch.phase_progress("queued", {"phase": "preparing data"}) is None


def test_a_run_s_table_row(tmp_path: Path) -> None:
    run = tmp_path / "run-a"
    files.atomic_write_json(run / "config.json", {"epochs": 3, "batch_size": 16, "split": "patient", "notes": "x"})
    files.atomic_write_json(run / "data_summary.json", {"val_images": 7})
    row = watch.table_row(_run(run, damaged="metrics.jsonl: 2 lines skipped"))
    assert row["run"] == "run-a" and row["status"] == "finished" and row["val films (n)"] == 7
    assert (row["epochs"], row["batch_size"], row["split"], row["seed"]) == (3, 16, "patient", None)
    assert "notes" not in row
    assert row["duration (min)"] == 1.5 and row["problem"] == "metrics.jsonl: 2 lines skipped"
    assert watch.table_row(_run(run, duration_s=None))["duration (min)"] == 0.0


def test_which_run_is_watched_waited_for_and_activated(tmp_path: Path) -> None:
    a, b, c = (_run(tmp_path / n, state=s) for n, s in (("a", "running"), ("b", "queued"), ("c", "finished")))
    assert watch.watched_index([a, b, c], str(tmp_path / "b")) == 1
    assert watch.watched_index([a, b, c], None) == 0 and watch.watched_index([a, b, c], "elsewhere") == 0
    # The visitor's own run waits while every slot is taken; with a slot free, Start starts another.
    assert watch.own_run_waiting([a, b], str(tmp_path / "b"), 2) is b
    assert watch.own_run_waiting([a, b], str(tmp_path / "b"), 3) is None
    assert watch.own_run_waiting([a, b], str(tmp_path / "c"), 1) is None
    stopped = _run(tmp_path / "d", state="stopped")
    no_model = _run(tmp_path / "e", has_model=False)
    assert watch.activatable([a, b, c, stopped, no_model]) == [c, stopped]
