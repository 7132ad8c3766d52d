"""The monitor (pneumo.integrations.records.monitor, `pneumo monitor`, pages/monitor.py) on a simulated site."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from pneumo.cli import main
from pneumo.integrations import records as R
from pneumo.model.reading import NOT_ASSESSABLE, decide
from tests.conftest import ROOT

THRESHOLD = 0.3
MODEL = "site-model"
DAY0 = datetime(2025, 3, 3, 8, tzinfo=timezone.utc)  # a Monday


@pytest.fixture(autouse=True)
def _fresh_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(R.ENV_DATABASE_URL, raising=False)
    monkeypatch.setenv("PNEUMO_RUNS_DIR", str(tmp_path / "runs"))
    yield
    R.close_all()


def _card(folder: Path, **extra) -> Path:
    """A model folder holding only a card: the monitor reads the card, never the network."""
    folder.mkdir(parents=True, exist_ok=True)
    card = {
        "name": MODEL,
        "architecture": "none",
        "threshold": THRESHOLD,
        "validation": {
            "kind": "held-out",
            "n": 1000,
            "threshold": THRESHOLD,
            "sensitivity": 0.9,
            "specificity": 0.99,
            "operating_point": {"target_recall": 0.9},
        },
        **extra,
    }
    (folder / "card.json").write_text(json.dumps(card))
    (folder / "model.keras").write_bytes(b"")  # present for the app's model check; never loaded
    return folder


def _simulated_site(url: str, tmp_path: Path, seed: int = 7) -> pd.DataFrame:
    """60 readings over three days: pneumonia scores from Beta(6, 2), normal from Beta(2, 4); three films the input
    check could not assess, one unreadable input; readers' verdicts for the first 45, imported by pixel hash."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation([1] * 24 + [0] * 36)
    rows = []
    for i, y in enumerate(truth):
        p = float(rng.beta(6, 2) if y else rng.beta(2, 4))
        assessable = i not in (5, 25, 47)
        rows.append(
            {
                "i": i,
                "y": int(y),
                "probability": None if i == 33 else p,
                "decision": None if i == 33 else decide(p, THRESHOLD, 0.05, assessable),
                "error": "not an image" if i == 33 else None,
                "sha": hashlib.sha256(f"film {i}".encode()).hexdigest(),
                "time": DAY0 + timedelta(days=i // 20, minutes=i),
            }
        )
    R.add_readings(
        [
            R.NewReading(
                source=R.ReadingSource.upload(f"film{r['i']}.png"),
                model=MODEL,
                card_hash="c" * 12,
                operating_point="shipped",
                threshold=THRESHOLD,
                probability=r["probability"],
                decision=r["decision"],
                pixel_sha256=r["sha"],
                error=r["error"],
                time=r["time"],
            )
            for r in rows
        ],
        user="radiographer",
        url=url,
    )
    frame = pd.DataFrame(rows)
    judged = frame[frame["i"] < 45]
    table = tmp_path / "verdicts.csv"
    table.write_text(
        "sha256,label\n" + "".join(f"{r.sha},{'PNEUMONIA' if r.y else 'NORMAL'}\n" for r in judged.itertuples())
    )
    report = R.import_verdicts(table, reader="dr a", url=url)
    assert report.matched == report.stored == 45
    frame["verdict"] = frame["i"] < 45
    return frame


def _bounds(k: int, n: int) -> tuple[float, float]:
    """One-sided 95 % Clopper-Pearson bounds: the two-sided 90 % interval's ends, by scipy."""
    interval = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
    return (0.0 if k == 0 else interval.low), (1.0 if k == n else interval.high)


def test_simulated_site_figures_alerts_and_proposed_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    frame = _simulated_site(url, tmp_path)
    model = _card(tmp_path / "model")
    assert main(["monitor", "--model", str(model), "--json", "--database", url]) == 0
    report = json.loads(capsys.readouterr().out)

    # By hand: the judged films with a decision, decided at the threshold in force.
    counted = frame[frame["verdict"] & frame["probability"].notna() & (frame["decision"] != NOT_ASSESSABLE)]
    y, p = counted["y"].to_numpy(), counted["probability"].to_numpy()
    tn, fp, fn, tp = confusion_matrix(y, p >= THRESHOLD, labels=[0, 1]).ravel()
    assert report["readings"] == 60 and report["verdicts"] == 45
    assert report["films"] == len(counted) and report["left_out"] == 45 - len(counted) > 0
    assert report["confusion"] == {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
    assert report["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert report["specificity"] == pytest.approx(tn / (tn + fp))
    sens_low, sens_high = _bounds(tp, tp + fn)
    spec_low, spec_high = _bounds(tn, tn + fp)
    assert report["sensitivity_lower_95"] == pytest.approx(sens_low)
    assert report["specificity_lower_95"] == pytest.approx(spec_low)
    assert report["specificity_upper_95"] == pytest.approx(spec_high)

    # The card claims sensitivity 0.9 (inside what the verdicts allow) and specificity 0.99 (above it).
    assert sens_low <= 0.9 <= sens_high
    assert spec_high < 0.99
    assert [(a["figure"], a["direction"]) for a in report["alerts"]] == [("specificity", "card claims more")]
    assert report["alerts"][0]["bound"] == pytest.approx(spec_high) and "0.990" in report["alerts"][0]["message"]

    # By day: readings, flagged among readings with a decision, not assessable among all, agreement with readers.
    frame["day"] = frame["time"].dt.date.astype(str)
    decided = frame["probability"].notna() & (frame["decision"] != NOT_ASSESSABLE)
    expected = []
    for day, group in frame.groupby("day"):
        d = group[decided[group.index]]
        judged = d[d["verdict"]]
        expected.append(
            {
                "start": day,
                "readings": len(group),
                "flagged": (d["probability"] >= THRESHOLD).mean(),
                "not_assessable": (group["decision"] == NOT_ASSESSABLE).mean(),
                "verdicts": int(group["verdict"].sum()),
                "agreement": ((judged["probability"] >= THRESHOLD) == (judged["y"] == 1)).mean()
                if len(judged)
                else None,
            }
        )
    periods = [{k: period[k] for k in expected[0]} for period in report["periods"]]
    assert len(periods) == 3
    for got, want in zip(periods, expected):
        assert got["start"] == want["start"] and got["readings"] == want["readings"] == 20
        assert got["verdicts"] == want["verdicts"]
        for key in ("flagged", "not_assessable", "agreement"):
            assert (got[key] is None) == (want[key] is None) or (got[key] is None and math.isnan(want[key]))
            if want[key] is not None and not (isinstance(want[key], float) and math.isnan(want[key])):
                assert got[key] == pytest.approx(want[key]), (day, key)

    # The proposed point: the site rule by hand (the highest threshold reaching recall 0.9 on the judged
    # pneumonia films, midway to the next lower score of any judged film).
    positives = np.sort(p[y == 1])[::-1]
    lowest = positives[math.ceil(0.9 * len(positives) - 1e-9) - 1]
    below = p[p < lowest]
    assert report["proposed"]["threshold"] == pytest.approx((lowest + below.max()) / 2)
    assert report["proposed"]["target_recall"] == 0.9
    assert ((p[y == 1] >= report["proposed"]["threshold"]).mean()) >= 0.9


def test_monitor_weeks_since_and_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    _simulated_site(url, tmp_path)
    model = _card(tmp_path / "model")
    assert main(["monitor", "--model", str(model), "--json", "--by", "week", "--database", url]) == 0
    weekly = json.loads(capsys.readouterr().out)
    assert [(p["start"], p["readings"]) for p in weekly["periods"]] == [("2025-03-03", 60)]
    assert main(["monitor", "--model", str(model), "--since", "2025-03-05", "--json", "--database", url]) == 0
    later = json.loads(capsys.readouterr().out)
    assert later["readings"] == 20 and later["verdicts"] == 5 and later["since"] == "2025-03-05"
    assert main(["monitor", "--model", str(model), "--database", url]) == 0
    text = capsys.readouterr().out
    assert "ALERT specificity: the card claims 0.990" in text and "proposed site point" in text


def test_a_film_counts_once_at_the_point_in_force(tmp_path: Path) -> None:
    """Read twice (at an older threshold, then today's), judged once: one film, decided at today's threshold."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    films = [("a" * 64, 0.35, 1), ("b" * 64, 0.45, 0), ("c" * 64, 0.9, 1)]
    entries = []
    for threshold, day in ((0.5, 0), (0.4, 1)):
        for digest, p, _ in films:
            entries.append(
                R.NewReading(
                    R.ReadingSource.upload(digest[:4]),
                    MODEL,
                    "c" * 12,
                    "shipped",
                    threshold,
                    p,
                    "PNEUMONIA" if p >= threshold else "NORMAL",
                    pixel_sha256=digest,
                    time=DAY0 + timedelta(days=day),
                )
            )
    ids = R.add_readings(entries, user="u", url=url)
    for reading_id, (_, _, y) in zip(ids[:3], films):  # verdicts on the older readings
        R.add_verdict(reading_id, "PNEUMONIA" if y else "NORMAL", user="dr b", url=url)
    rows = R.monitor.load_rows(R.open_records(url), model=MODEL)
    report = R.compute(rows, threshold=0.4, claim=R.Claim(None, None, "none"), model=MODEL)
    assert report.readings == 6 and report.verdicts == 3 and report.films == 3
    # At 0.4: 0.35 (pneumonia) missed, 0.45 (normal) flagged, 0.9 found.
    assert report.confusion == {"tp": 1, "fn": 1, "tn": 0, "fp": 1}
    # Agreement on day 0 is at the threshold the readings were made at (0.5): 0.35 missed, 0.45 right, 0.9 found.
    assert report.periods[0].agreement == pytest.approx(2 / 3) and report.periods[1].agreement is None
    assert report.alerts == [] and any("states no figures" in n for n in report.notes)
    # A claim far below what the verdicts show is said too, as "card claims less".
    lower = R.compute(rows, threshold=0.3, claim=R.Claim(0.01, None, "card"), model=MODEL)
    assert [(a.figure, a.direction) for a in lower.alerts] == [("sensitivity", "card claims less")]


def test_two_model_files_under_one_card_name_are_monitored_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two networks whose cards share a name each read four films; a reading logged before model files were hashed
    carries the name only. The monitor of each file counts its own readings (and the old one, saying so), never the
    other's; calibrate --from-verdicts sets its point on the same films."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    one, two = _card(tmp_path / "one"), _card(tmp_path / "two")
    (one / "model.keras").write_bytes(b"network one")
    (two / "model.keras").write_bytes(b"network two")
    sha_one, sha_two = (hashlib.sha256(b).hexdigest() for b in (b"network one", b"network two"))
    films = {  # file hash: [(probability, label)]
        sha_one: [(0.9, 1), (0.2, 1), (0.1, 0), (0.05, 0)],  # at 0.3: tp 1, fn 1, tn 2, fp 0
        sha_two: [(0.8, 0), (0.7, 0), (0.9, 1), (0.95, 1)],  # at 0.3: tp 2, fn 0, tn 0, fp 2
        None: [(0.6, 1)],  # logged before model files were hashed: tp 1
    }
    entries, labels = [], []
    for number, (model_sha, scored) in enumerate(films.items()):
        for i, (p, y) in enumerate(scored):
            entries.append(
                R.NewReading(
                    R.ReadingSource.upload(f"{number}-{i}.png"),
                    MODEL,
                    "c" * 12,
                    "shipped",
                    THRESHOLD,
                    p,
                    "PNEUMONIA" if p >= THRESHOLD else "NORMAL",
                    pixel_sha256=hashlib.sha256(f"film {number} {i}".encode()).hexdigest(),
                    time=DAY0 + timedelta(hours=number),
                    model_sha256=model_sha,
                )
            )
            labels.append(y)
    ids = R.add_readings(entries, user="u", url=url)
    for reading_id, y in zip(ids, labels):
        R.add_verdict(reading_id, "PNEUMONIA" if y else "NORMAL", user="dr b", url=url)
    assert main(["monitor", "--model", str(one), "--json", "--database", url]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["model_sha256"] == sha_one and first["readings"] == 5
    assert (first["by_name_only"], first["other_files"]) == (1, 4)
    assert first["confusion"] == {"tp": 2, "fn": 1, "tn": 2, "fp": 0}
    assert any("4 reading(s) under the name site-model were made by another model file" in n for n in first["notes"])
    second = R.monitor_model(two, url=url)
    assert second.confusion == {"tp": 3, "fn": 0, "tn": 0, "fp": 2} and second.other_files == 4
    # The site point from the verdicts: on model one's five films only (3 pneumonia, 2 normal).
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    command = ["calibrate", "--model", str(one), "--from-verdicts", "--target-recall", "0.9", "--name", "ward"]
    assert main([*command, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n"], summary["n_positive"]) == (5, 3)
    # Recall 0.9 of three pneumonia films needs all three: the lowest is 0.2, midway to the next lower score, 0.1.
    assert summary["threshold"] == pytest.approx(0.15)


def test_films_the_input_check_refuses_far_more_often_than_on_held_out_films_raise_an_alert(tmp_path: Path) -> None:
    """Ten scored readings and one unreadable input, no verdict at all: 5 of the 10 not assessable, against a card
    whose input check marks 2 % of held-out films so. The alert needs no verdict; one of ten is within chance."""

    def rows(refused: int) -> list:
        return [
            R.MonitorRow(i, DAY0, f"film {i}", THRESHOLD, 0.5, NOT_ASSESSABLE if i < refused else "PNEUMONIA", None)
            for i in range(10)
        ] + [R.MonitorRow(10, DAY0, "reading 10", THRESHOLD, None, None, None, error=True)]

    claim = R.Claim(None, None, "card", not_assessable=0.02)
    report = R.compute(rows(5), threshold=THRESHOLD, claim=claim, model=MODEL)
    [alert] = report.alerts
    low, _ = _bounds(5, 10)  # scipy's exact interval: about 0.222
    assert (alert.figure, alert.successes, alert.trials, alert.claimed) == ("not assessable", 5, 10, 0.02)
    assert alert.bound == pytest.approx(low) and low > 0.02
    assert alert.message.startswith("not assessable: 5 of 10 scored readings (50.0%; one-sided 95 % lower bound 22.2%)")
    assert _bounds(1, 10)[0] < 0.02 and R.compute(rows(1), threshold=THRESHOLD, claim=claim).alerts == []
    assert R.compute(rows(5), threshold=THRESHOLD, claim=R.Claim(None, None, "card")).alerts == []  # no rate: none
    # The rate comes from the card's input check section.
    url = f"sqlite:///{tmp_path / 'r.db'}"
    model = _card(tmp_path / "m", input_check={"false_alarm_rate_on_held_out": 0.02})
    assert R.monitor_model(model, url=url).claim.not_assessable == 0.02
    # Measured on a known number of films, the claim is what that measurement allows at most: 0 of 522 refused
    # allows up to 1 - 0.05 ** (1 / 522) = 0.572 %, so a single refused film among a hundred is no alarm.
    model = _card(tmp_path / "m2", input_check={"false_alarm_rate_on_held_out": 0.0, "calibration_images": 522})
    allowed = R.monitor_model(model, url=url).claim.not_assessable
    assert allowed == pytest.approx(1 - 0.05 ** (1 / 522))
    one_in_100 = [
        R.MonitorRow(i, DAY0, f"f{i}", THRESHOLD, 0.5, NOT_ASSESSABLE if i == 0 else "NORMAL", None) for i in range(100)
    ]
    assert (
        R.compute(one_in_100, threshold=THRESHOLD, claim=R.Claim(None, None, "card", not_assessable=allowed)).alerts
        == []
    )


def test_the_claim_is_of_the_point_in_force(tmp_path: Path) -> None:
    from pneumo.integrations.records.monitor import card_point
    from pneumo.model.loading import read_card

    site = {"name": "ward A", "threshold": 0.2, "sensitivity": 0.97, "specificity": 0.6, "n": 80}
    model = _card(tmp_path / "m", site_operating_points=[site])
    card = read_card(model / "model.keras")
    claimed = R.Claim(0.97, 0.6, "site point 'ward A' on 80 films")
    assert card_point(card, model / "model.keras", "ward A") == ("ward A", 0.2, claimed)
    name, threshold, claim = card_point(card, model / "model.keras", None)
    assert (name, threshold, claim.sensitivity, claim.specificity) == ("shipped", THRESHOLD, 0.9, 0.99)
    with pytest.raises(R.RecordsError, match="no operating point 'ward B'"):
        card_point(card, model / "model.keras", "ward B")
    # Stored predictions beside the model: the claim is recomputed at the card's threshold (saved since training).
    pd.DataFrame(
        {
            "path": [f"f{i}.png" for i in range(6)],
            "label": [1, 1, 1, 0, 0, 0],
            "probability": [0.9, 0.5, 0.25, 0.1, 0.35, 0.2],
        }
    ).to_csv(model / "val_predictions.csv", index=False)
    _, _, stored = card_point(card, model / "model.keras", None)
    assert (stored.sensitivity, stored.specificity) == pytest.approx((2 / 3, 2 / 3))


def test_monitor_page_composes_the_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from pneumo.app.ui import ENTRY_MARK, plain

    url = f"sqlite:///{tmp_path / 'site.db'}"
    _simulated_site(url, tmp_path)
    R.close_all()
    models = _card(tmp_path / "models")
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(models))
    at = AppTest.from_file(str(ROOT / "pages" / "monitor.py"), default_timeout=60)
    at.session_state[ENTRY_MARK] = True
    at.session_state["model_path"] = str(models / "model.keras")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Readings"] == "60" and metrics["With a verdict"] == "45"
    expected = R.monitor_model(models, url=url)
    assert metrics["Specificity vs readers"] == f"{expected.specificity:.3f}"
    assert [e.value for e in at.error] == [plain(expected.alerts[0].message)]  # escaped for Markdown
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 3
    at.radio(key="monitor-by").set_value("week").run()
    assert len(at.dataframe[0].value) == 1


def test_monitor_page_without_readings_says_how_to_log_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from pneumo.app.ui import ENTRY_MARK

    models = _card(tmp_path / "models")
    monkeypatch.setenv(R.ENV_DATABASE_URL, f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(models))
    at = AppTest.from_file(str(ROOT / "pages" / "monitor.py"), default_timeout=60)
    at.session_state[ENTRY_MARK] = True
    at.session_state["model_path"] = str(models / "model.keras")
    at.run()
    assert not at.exception and not at.error
    assert any("predict --log" in i.value for i in at.info)


def test_calibrate_from_verdicts_records_the_proposed_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    _simulated_site(url, tmp_path)
    monkeypatch.setenv(R.ENV_DATABASE_URL, url)
    monkeypatch.setenv("PNEUMO_USER", "physicist")
    model = _card(tmp_path / "model")
    assert main(["monitor", "--model", str(model), "--json"]) == 0
    proposed = json.loads(capsys.readouterr().out)["proposed"]
    command = ["calibrate", "--model", str(model), "--from-verdicts", "--target-recall", "0.9", "--name", "ward B"]
    assert main([*command, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threshold"] == pytest.approx(proposed["threshold"])
    card = json.loads((model / "card.json").read_text())
    [point] = card["site_operating_points"]
    assert (point["name"], point["threshold"]) == ("ward B", summary["threshold"])
    assert point["data"].startswith("readers' verdicts in sqlite:///") and point["n"] == summary["n"]
    # The saving is in the audit trail, and the trail is intact.
    events = list(R.iter_events(R.open_records(url)))
    assert (events[-1]["kind"], events[-1]["user"]) == ("threshold_saved", "physicist")
    assert events[-1]["details"]["site_point"] == "ward B"
    assert R.verify(R.open_records(url)).ok
    # At the new point the claim is the point's own figures, set on these very verdicts: no alert.
    assert main(["monitor", "--model", str(model), "--operating-point", "ward B", "--json"]) == 0
    at_site = json.loads(capsys.readouterr().out)
    assert at_site["threshold"] == summary["threshold"] and at_site["alerts"] == []
    # The name is taken now; data and verdicts together are refused; both with one line, exit 2.
    assert main(command) == 2
    assert "already has a site operating point 'ward B'" in capsys.readouterr().err
    assert main([*command[:-2], "--name", "ward C", "--data", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(model), "--target-recall", "0.9", "--name", "x"]) == 2
    assert "--from-verdicts" in capsys.readouterr().err
