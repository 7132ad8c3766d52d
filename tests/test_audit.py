"""Label audit: confident learning on out-of-fold scores, and reviewers' verdicts beside the data."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pneumo.data.collection import scan
from pneumo.evaluation import audit
from tests.conftest import make_folder, synthetic_xray, write_png


def test_confident_learning_flags_labels_their_scores_contradict() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(300, int), np.zeros(150, int)]
    p = np.r_[rng.uniform(0.7, 1.0, 300), rng.uniform(0.0, 0.3, 150)]
    flipped = [3, 40, 77, 310, 400]  # given the wrong label: their scores say the other class
    y[flipped] = 1 - y[flipped]
    found = audit.audit(pd.DataFrame({"path": [f"f{i}" for i in range(450)], "label": y, "probability": p}))
    suspects = set(found.loc[found["suspect"], "path"])
    assert {f"f{i}" for i in flipped} <= suspects
    assert len(suspects) <= 15  # not every film: the clean ones are trusted
    # Self-confidence is the score's probability of the given label: p for a film labelled 1, 1 - p for one
    # labelled 0. The flipped films' given labels get at most 0.3 and every clean one at least 0.7, so the
    # five flipped films head the list, and each row keeps its own film's score.
    assert set(found["path"][:5]) == {f"f{i}" for i in flipped} and found["score"].is_monotonic_increasing
    index = found["path"].str[1:].astype(int).to_numpy()
    confidence = np.where(y[index] == 1, p[index], 1 - p[index])
    np.testing.assert_allclose(found["score"].to_numpy(), confidence, rtol=0, atol=1e-6)
    assert found["label"].tolist() == y[index].tolist()


def test_review_round_trip_and_apply(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=6, size=40)
    frame = scan(data).frame
    normal, pneu = frame[frame.label == 0].path.iloc[0], frame[frame.label == 1].path.iloc[0]
    review = audit.write_review(audit.review_path(data), {normal: "relabel", pneu: "exclude"})
    audit.write_review(review, {frame.path.iloc[2]: "keep"})  # a second session adds, keeps the first's
    assert review == data / audit.REVIEW_FILE
    assert set(audit.read_review(review)["verdict"]) == {"relabel", "exclude", "keep"}
    applied, counts = audit.apply_review(frame, review)
    assert len(applied) == len(frame) - 1 and pneu not in set(applied.path)
    assert applied.set_index("path").loc[normal, "label"] == 1
    assert applied.set_index("path").loc[normal, "class_name"] == "PNEUMONIA"
    assert counts == {"keep": 1, "relabel": 1, "exclude": 1, "unmatched": 0}
    assert sorted(p.name for p in (data / "NORMAL").iterdir()) == sorted(
        Path(p).name for p in frame.path if "NORMAL/" in p
    )


def test_a_bad_verdict_is_refused_naming_the_row(tmp_path: Path) -> None:
    bad = tmp_path / "review.csv"
    bad.write_text("path,verdict\na.png,keep\nb.png,delete\n")
    with pytest.raises(audit.ReviewError, match="row 3"):
        audit.read_review(bad)
    with pytest.raises(audit.ReviewError):
        audit.write_review(tmp_path / "new.csv", {"a.png": "drop"})
    assert not (tmp_path / "new.csv").exists()


def _split_collection(root: Path) -> Path:
    """train/ and val/ folders holding films of the same names: a class folder and a name are not a film."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls, pneumonia in (("NORMAL", False), ("PNEUMONIA", True)):
            for name in ("a.png", "b.png"):
                write_png(root / split / cls / name, synthetic_xray(rng, 32, pneumonia=pneumonia))
    return root


def _film(frame: pd.DataFrame, relative: str) -> str:
    """The frame's path (as scan gives it) of the film at `relative` under the collection."""
    (path,) = [p for p in frame["path"] if Path(p).as_posix().endswith("/" + relative)]
    return str(path)


def _rows(review: Path) -> dict[str, dict[str, str]]:
    return {r["path"]: r for r in audit.read_review(review).to_dict("records")}


def test_a_second_session_starts_from_the_verdicts_the_first_saved(tmp_path: Path) -> None:
    data = _split_collection(tmp_path / "d")
    frame = scan(data).frame
    a, b, c = (_film(frame, f) for f in ("train/NORMAL/a.png", "val/NORMAL/a.png", "train/PNEUMONIA/b.png"))
    review = audit.review_path(data)
    assert audit.saved_verdicts(review, [a, b, c]) == {}  # no review yet: every widget starts at "keep"
    audit.write_review(review, {a: "exclude", c: "relabel"})
    # What a second reviewer's widgets start from: the saved verdicts, by film, and nothing for an unseen film
    # (b has the same class folder and name as a, but is another film).
    assert audit.saved_verdicts(review, [a, b, c]) == {a: "exclude", c: "relabel"}


def test_only_the_verdicts_a_reviewer_changed_are_written(tmp_path: Path) -> None:
    data = _split_collection(tmp_path / "d")
    frame = scan(data).frame
    films = [_film(frame, f) for f in ("train/NORMAL/a.png", "train/NORMAL/b.png", "val/PNEUMONIA/a.png")]
    a, b, c = films
    review = audit.write_review(audit.review_path(data), {a: "exclude"})
    first = _rows(review)["train/NORMAL/a.png"]
    # A second session: widgets start from the file; the reviewer changes c only and leaves a and b as shown.
    saved = audit.saved_verdicts(review, films)
    widgets = {f: saved.get(f, "keep") for f in films} | {c: "relabel"}
    changed = audit.changed_verdicts(widgets, saved)
    assert changed == {c: "relabel"}
    audit.write_review(review, changed)
    rows = _rows(review)
    assert set(rows) == {"train/NORMAL/a.png", "val/PNEUMONIA/a.png"}  # no "keep" for b, which nobody looked at
    assert rows["train/NORMAL/a.png"] == first  # the first reviewer's exclude, and its time, untouched
    assert rows["val/PNEUMONIA/a.png"]["verdict"] == "relabel"
    # A verdict equal to the saved one writes nothing: the file is not even replaced.
    inode = os.stat(review).st_ino
    audit.write_review(review, {a: "exclude", c: "relabel"})
    assert os.stat(review).st_ino == inode and _rows(review) == rows
    # A reviewer setting a saved verdict back to "keep" did change it: that is written.
    assert audit.changed_verdicts({a: "keep", b: "keep"}, {a: "exclude"}) == {a: "keep"}


def test_a_row_names_one_film_by_its_path_relative_to_the_data_root(tmp_path: Path) -> None:
    data = _split_collection(tmp_path / "d")
    frame = scan(data).frame
    train_a, val_a = _film(frame, "train/NORMAL/a.png"), _film(frame, "val/NORMAL/a.png")
    review = audit.write_review(audit.review_path(data), {train_a: "relabel"})
    assert review.read_text().splitlines()[1].startswith("train/NORMAL/a.png,")  # stored relative, POSIX

    applied, counts = audit.apply_review(frame, review)
    labels = dict(zip(applied["path"], applied["label"]))
    assert labels[train_a] == 1 and labels[val_a] == 0  # only the film the row names is relabelled
    assert counts == {"keep": 0, "relabel": 1, "exclude": 0, "unmatched": 0}

    # The collection copied elsewhere, review included: the relative path still names the same film.
    moved = shutil.copytree(data, tmp_path / "elsewhere")
    applied, counts = audit.apply_review(scan(moved).frame, moved / audit.REVIEW_FILE)
    assert counts["relabel"] == 1 and dict(zip(applied["path"], applied["label"]))[str(moved / "val/NORMAL/a.png")] == 0

    # An older review holds the app's absolute paths: one under the review's folder is that film, exactly.
    older = data / "older.csv"
    older.write_text(f"path,label,verdict,score,reviewed\n{val_a},0,exclude,,\n")
    applied, counts = audit.apply_review(frame, older)
    assert val_a not in set(applied["path"]) and train_a in set(applied["path"]) and counts["exclude"] == 1
    # One elsewhere (written on another machine) is refused in one line naming the file and the row.
    older.write_text("path,verdict\n/elsewhere/train/NORMAL/a.png,exclude\n")
    with pytest.raises(audit.ReviewError, match=r"older\.csv, row 2: .*not under") as err:
        audit.apply_review(frame, older)
    assert "\n" not in str(err.value)


def test_duplicate_or_conflicting_rows_are_refused_naming_their_rows(tmp_path: Path) -> None:
    data = _split_collection(tmp_path / "d")
    frame = scan(data).frame
    review = audit.review_path(data)
    text = (
        "path,verdict\n"
        "train/NORMAL/a.png,keep\n"  # row 2
        "val/NORMAL/a.png,exclude\n"  # row 3: another film
        f"{data / 'train/NORMAL/a.png'},exclude\n"  # row 4: the film of row 2 (absolute), another verdict
        "train/PNEUMONIA/b.png,relabel\n"  # row 5
        "train/PNEUMONIA/b.png,relabel\n"  # row 6: the same row twice
    )
    review.write_text(text)
    with pytest.raises(ValueError, match="rows 2, 4") as err:
        audit.read_review(review)
    message = str(err.value)
    assert "\n" not in message and str(review) in message and "rows 5, 6" in message and "row 3" not in message
    # Nothing applies or writes over a file that does not say which verdict is meant; the file is left as it was.
    with pytest.raises(ValueError, match="rows 2, 4"):
        audit.apply_review(frame, review)
    with pytest.raises(ValueError, match="rows 2, 4"):
        audit.write_review(review, {_film(frame, "val/PNEUMONIA/a.png"): "exclude"})
    assert review.read_text() == text


def test_two_reviewers_saving_at_once_both_keep_their_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _split_collection(tmp_path / "d")
    frame = scan(data).frame
    review = audit.review_path(data)
    films = sorted(frame["path"])[:4]
    write = audit.atomic_write_text

    def slow_write(path: str | Path, text: str) -> None:
        # Widens the window between a writer's read and its replace: without a lock every writer reads the file
        # before any has replaced it, and all but the last one's verdicts are lost.
        time.sleep(0.3)
        write(path, text)

    monkeypatch.setattr(audit, "atomic_write_text", slow_write)
    start = threading.Barrier(len(films))
    errors: list[BaseException] = []

    def reviewer(film: str) -> None:
        try:
            start.wait()
            audit.write_review(review, {film: "exclude"})
        except BaseException as exc:  # reported below: an exception in a thread does not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(f,)) for f in films]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(audit.read_review(review)) == len(films)  # one row per reviewer: none lost
    assert audit.saved_verdicts(review, films) == {f: "exclude" for f in films}


def test_the_explore_page_starts_from_saved_verdicts_and_saves_only_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    data = _split_collection(tmp_path / "d")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    for name, value in (("MODELS_DIR", tmp_path / "models"), ("RUNS_DIR", tmp_path / "runs"), ("DATA_ROOTS", data)):
        monkeypatch.setenv(f"PNEUMO_{name}", str(value))
    monkeypatch.setenv("PNEUMO_ALLOW_CHANGES", "1")
    # Every film a suspect (the shipped model's own audit of eight tiny films would flag few or none).
    frame = scan(data).frame
    audited = frame[["path", "label"]].assign(
        probability=0.5, source="model", score=np.linspace(0.01, 0.2, len(frame)), suspect=True
    )
    monkeypatch.setattr(audit, "audit_folder", lambda *args, **kwargs: audited.copy())
    films = list(audited["path"])
    review = audit.review_path(data)

    def session() -> AppTest:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
        at.query_params["data_root"] = str(data)
        at.run()
        at.switch_page("pages/explore.py")
        return at.run()

    def widget(at: AppTest, film: str) -> Any:
        return at.selectbox(key=f"verdict:{data}:{film}")

    def save(at: AppTest) -> None:
        at.button(key=f"save-verdicts:{data}").click().run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]

    first = session()
    widget(first, films[0]).set_value("exclude").run()
    save(first)
    assert audit.saved_verdicts(review, films) == {films[0]: "exclude"}  # no "keep" for the films left alone

    second = session()
    assert [widget(second, f).value for f in films] == ["exclude"] + ["keep"] * (len(films) - 1)
    widget(second, films[1]).set_value("relabel").run()
    audit.write_review(review, {films[2]: "exclude"})  # a third reviewer saves meanwhile
    save(second)
    assert audit.saved_verdicts(review, films) == {films[0]: "exclude", films[1]: "relabel", films[2]: "exclude"}
    # The first session, stale, saves again without changing anything: nothing is written over the others'.
    before = review.read_text()
    save(first)
    assert review.read_text() == before
    assert widget(first, films[1]).value == "relabel"  # and its untouched widgets now show the file's verdicts


def test_audit_labels_cli_on_a_folder_without_stored_predictions(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pneumo.cli import main

    data = make_folder(tmp_path / "d", n_per_class=10, size=64)
    assert main(["audit-labels", str(data), "--model", str(tiny_run / "model.keras"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 20 and out["review_file"] == str(data / audit.REVIEW_FILE)
    assert all(r["source"] == "model" for r in out["suspected"])
    assert main(["audit-labels", str(tmp_path / "missing")]) == 2


def test_a_review_that_names_no_film_of_the_folder_is_refused(tmp_path: Path) -> None:
    """A review written for another folder matches nothing here: applying it is an error naming the file,
    not a training run that silently ignores every verdict."""
    data = make_folder(tmp_path / "data", n_per_class=2, size=32)
    other = make_folder(tmp_path / "other", n_per_class=2, size=32)
    frame = scan(data).frame
    only_there = other / "NORMAL" / "IM-7777-0001.png"
    shutil.copy(next((other / "NORMAL").iterdir()), only_there)
    review = audit.write_review(audit.review_path(other), {str(only_there): "exclude"})
    with pytest.raises(ValueError, match="none of its 1 verdict"):
        audit.apply_review(frame, review, root=data)
