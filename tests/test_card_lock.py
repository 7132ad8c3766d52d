"""One writer at a time for every card update: site points recorded at once all land, each updater (calibrate,
evaluate --record, drift-reference, sweep --record, the app's threshold save) waits its turn, and a lock held too
long is refused in words, with nothing written.

The processes are forked (fork start method) after the card's reading is slowed down, so that, without the lock,
every one of them would read the card before any wrote it: the lost update is certain, not left to chance.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pneumo.core.card as card_module
from pneumo.core.card import ModelCard, update_card
from pneumo.core.files import LockTimeout, file_lock, lock_path
from pneumo.evaluation import site

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork and flock are POSIX")

READ_DELAY_S = 0.15


@pytest.fixture
def slow_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every card parse sleeps first: an update that reads without the lock reads before the others write."""
    original = ModelCard.__dict__["from_dict"].__func__

    def slow(cls: type[ModelCard], obj: Any, where: str = "card") -> ModelCard:
        time.sleep(READ_DELAY_S)
        return original(cls, obj, where)

    monkeypatch.setattr(ModelCard, "from_dict", classmethod(slow))


def _model(tmp_path: Path) -> Path:
    """A model folder holding only a card: every updater here reads and writes the card, never the network."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({"threshold": 0.5, "architecture": "compact_cnn"}))
    return folder / "model.keras"


def _run_at_once(jobs: list[Any]) -> list[int | None]:
    """Each job (a callable) in a process of its own, all released together; their exit codes."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(jobs))

    def body(job: Any) -> None:
        start.wait(timeout=30)
        job()

    processes = [context.Process(target=body, args=(job,)) for job in jobs]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    return [p.exitcode for p in processes]


def _calibration(name: str, seed: int) -> site.SiteCalibration:
    rng = np.random.default_rng(seed)
    y = (rng.random(80) < 0.5).astype(int)
    p = np.clip(np.where(y == 1, rng.normal(0.75, 0.15, 80), rng.normal(0.25, 0.15, 80)), 0, 1)
    return site.figures(name, y, p, 0.9, data="d", file_list_sha256_16="0" * 16)


def test_six_site_points_recorded_at_once_all_land(tmp_path: Path, slow_reads: None) -> None:
    """The probe: six `calibrate --name` at once kept four or five points; each run said "recorded"."""
    model = _model(tmp_path)
    names = [f"ward {i}" for i in range(6)]
    calibrations = [_calibration(name, i) for i, name in enumerate(names)]  # computed before the fork
    codes = _run_at_once([lambda c=c: site.record(model, c) for c in calibrations])
    assert codes == [0] * 6
    card = ModelCard.read(model.with_name("card.json"))
    assert sorted(p["name"] for p in card.site_operating_points) == names
    # Nothing is left beside the card: the lock's sidecar goes with its last holder.
    assert sorted(p.name for p in model.parent.iterdir()) == ["card.json"]


def test_every_card_updater_waits_its_turn(tmp_path: Path, slow_reads: None) -> None:
    """evaluate --record, drift-reference, sweep --record, the app's threshold save and calibrate, all at once."""
    from pneumo.evaluation import drift_reference, external, framing
    from pneumo.model.loading import save_operating_point

    model = _model(tmp_path)
    card_file = model.with_name("card.json")
    report = {
        "model": str(model),
        "data": "site films",
        "file_list_sha256_16": "0" * 16,
        "threshold_source": "model card",
        **dict.fromkeys(
            ("threshold", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1"), 0.9
        ),
        "n": 40,
        "confusion": {"tn": 10, "fp": 10, "fn": 0, "tp": 20},
    }

    class Reference:  # what record_in_card reads of a drift reference
        def card_section(self) -> dict[str, Any]:
            return {"reference": "held-out films", "n_fit": 1}

    calibration = _calibration("ward", 0)
    jobs = [
        lambda: external.record_evaluation(report, "external A"),
        lambda: drift_reference.record_in_card(model, Reference()),  # type: ignore[arg-type]
        lambda: framing.record_in_card(card_file, {"how": "sweep", "conditions": []}),
        lambda: save_operating_point(model, 0.42, "by hand", confirmed_by="test"),
        lambda: site.record(model, calibration),
    ]
    assert _run_at_once(jobs) == [0] * len(jobs)
    card = ModelCard.read(card_file)
    assert [e["name"] for e in card.external_evaluations] == ["external A"]
    assert card.extra["drift"]["reference"] == "held-out films"
    assert card.shift_checks["framing"]["how"] == "sweep"
    assert card.threshold == 0.42 and card.threshold_history[-1]["confirmed_by"] == "test"
    assert [p["name"] for p in card.site_operating_points] == ["ward"]


def _hold(path: Path, ready: Any, release: Any) -> None:
    with file_lock(path, timeout=5):
        ready.set()
        release.wait(30)


def test_a_lock_held_past_the_timeout_is_refused_in_words_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumo.model.loading import save_operating_point

    model = _model(tmp_path)
    card_file = model.with_name("card.json")
    before = card_file.read_bytes()
    monkeypatch.setattr(card_module, "CARD_LOCK_TIMEOUT_S", 0.4)
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(card_file, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        for update in (
            lambda: site.record(model, _calibration("ward", 0)),
            lambda: save_operating_point(model, 0.3, "by hand"),
        ):
            started = time.monotonic()
            with pytest.raises(LockTimeout) as caught:
                update()
            assert 0.35 <= time.monotonic() - started < 5
            message = str(caught.value)
            assert f"{card_file} is being updated by another process; tried for 0.4 s" in message
            assert "nothing written" in message and isinstance(caught.value, OSError)  # the CLI's one-line errors
            assert card_file.read_bytes() == before
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    # Let go, the same update goes through at once.
    save_operating_point(model, 0.3, "by hand")
    assert ModelCard.read(card_file).threshold == 0.3


def test_a_lock_left_by_a_dead_holder_does_not_block(tmp_path: Path) -> None:
    """A holder killed mid-update leaves its sidecar behind; the kernel released its lock, so the next update
    takes it (no stale-lock timeout), and removes the sidecar."""
    model = _model(tmp_path)
    card_file = model.with_name("card.json")
    lock_path(card_file).write_text("")
    pid = os.fork()
    if pid == 0:  # a holder that dies holding the lock
        fd = os.open(lock_path(card_file), os.O_RDONLY)
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        os._exit(0)
    os.waitpid(pid, 0)
    update_card(card_file, lambda card: setattr(card, "description", "after"), timeout=1)
    assert ModelCard.read(card_file).description == "after"
    assert not lock_path(card_file).exists()


def test_a_change_that_fails_or_breaks_the_card_writes_nothing(tmp_path: Path) -> None:
    model = _model(tmp_path)
    card_file = model.with_name("card.json")
    before = card_file.read_bytes()

    def boom(card: ModelCard) -> None:
        card.threshold = 0.1
        raise RuntimeError("stopped half-way")

    with pytest.raises(RuntimeError):
        update_card(card_file, boom)
    with pytest.raises(card_module.CardError, match="two site operating points"):
        update_card(
            card_file,
            lambda card: setattr(
                card, "site_operating_points", [{"name": "a", "threshold": 0.2}, {"name": "a", "threshold": 0.3}]
            ),
        )
    assert card_file.read_bytes() == before
    assert sorted(p.name for p in card_file.parent.iterdir()) == ["card.json"]
