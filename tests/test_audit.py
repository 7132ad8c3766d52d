"""Label audit: confident learning on out-of-fold scores, and reviewers' verdicts beside the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.data.collection import scan
from pneumo.evaluation import audit
from tests.conftest import make_folder


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
