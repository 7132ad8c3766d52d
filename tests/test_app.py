"""Every page through Streamlit's AppTest: renders on a fresh start, and widgets change what is shown."""

from __future__ import annotations

import ast
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pneumo.core import files
from pneumo.training import runs
from tests.conftest import ROOT

APP = str(ROOT / "streamlit_app.py")
PAGES = ["pages/home.py", "pages/predict.py", "pages/threshold.py", "pages/explore.py", "pages/train.py"]


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped model (so saving an operating point never touches models/) and an empty runs folder."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(models))
    monkeypatch.setenv("PNEUMO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", "")
    monkeypatch.setenv("PNEUMO_ALLOW_CHANGES", "1")
    return tmp_path


def _open(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    if page != PAGES[0]:
        at.switch_page(page)
        at.run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_fresh_start(app_env: Path, page: str) -> None:
    at = _open(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value


def test_home_shows_card_and_disclaimer(app_env: Path) -> None:
    at = _open(PAGES[0])
    card = json.loads((app_env / "models" / "card.json").read_text())
    assert any("not a medical device" in w.value for w in at.warning)
    assert any(f"{card['threshold']:.4f}" in m.value for m in at.markdown)
    figures = _figures(at)
    assert set(figures) >= {"ROC AUC", "Sensitivity", "Specificity"}
    # Four digits: 0.9996 must not read as 1.000.
    assert len(figures["ROC AUC"].split(".")[-1]) == 4
    # The figures are the stored predictions' own, recomputed at the card's threshold.
    stored = (
        app_env
        / "models"
        / ("oof_predictions.csv" if (app_env / "models" / "oof_predictions.csv").exists() else "val_predictions.csv")
    )
    preds = pd.read_csv(stored)
    y, p, t = preds["label"].to_numpy(), preds["probability"].to_numpy(), card["threshold"]
    assert (
        figures["Specificity"] == f"{(p[y == 0] < t).mean():.4f}"
    )  # counted by hand, not by pneumo.evaluation.metrics
    assert figures["Sensitivity"] == f"{(p[y == 1] >= t).mean():.4f}"


def _figures(at: AppTest) -> dict[str, str]:
    """The Overview's figure table (a one-row dataframe: it wraps at any width where metrics truncate)."""
    table = next(d.value for d in at.dataframe if "ROC AUC" in d.value.columns)
    return {c: str(table[c].iloc[0]) for c in table.columns}


def _stored(root: Path) -> Path:
    oof = root / "models" / "oof_predictions.csv"
    return oof if oof.exists() else root / "models" / "val_predictions.csv"


def _threshold_slider(at: AppTest):
    return next(s for s in at.slider if s.label == "Decision threshold")


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_threshold_slider_changes_confusion_and_target_recall_sets_it(app_env: Path) -> None:
    at = _open("pages/threshold.py")
    preds = pd.read_csv(_stored(app_env))
    slider = _threshold_slider(at)
    slider.set_value(0.0).run()
    assert _metric(at, "Sensitivity") == "1.000" and _metric(at, "Specificity") == "0.000"
    flagged_all = _metric(at, "Flagged for review")
    _threshold_slider(at).set_value(1.0).run()
    assert _metric(at, "Flagged for review") != flagged_all
    at.number_input(key=next(n.key for n in at.number_input if n.label == "Target recall")).set_value(0.9).run()
    # By hand: the highest threshold keeping 90 % of the positives is the ceil(0.9 n)-th highest positive score.
    ranked = np.sort(preds.loc[preds["label"] == 1, "probability"].to_numpy())[::-1]
    expected = ranked[math.ceil(0.9 * len(ranked)) - 1]
    assert expected - 1e-4 <= _threshold_slider(at).value <= expected
    value = _threshold_slider(at).value
    positives = preds.loc[preds["label"] == 1, "probability"]
    assert (positives >= value).mean() >= 0.9  # the slider's rounding did not step over the target
    # The page's figures are the stored scores counted at the slider's value, by hand here.
    assert _metric(at, "Sensitivity") == f"{(positives >= value).mean():.3f}"
    assert _metric(at, "Specificity") == f"{(preds.loc[preds['label'] == 0, 'probability'] < value).mean():.3f}"


def _save(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Save operating point")


def test_save_operating_point_writes_card_and_every_page_follows(app_env: Path) -> None:
    at = _open("pages/threshold.py")
    _threshold_slider(at).set_value(0.4242).run()
    assert _save(at).disabled  # the shipped card changes for everyone: an explicit confirmation first
    next(c for c in at.checkbox if "shipped model" in c.label).check().run()
    _save(at).click().run()
    card = json.loads((app_env / "models" / "card.json").read_text())
    assert card["threshold"] == pytest.approx(0.4242) and card["threshold_history"]
    assert _threshold_slider(at).value == pytest.approx(0.4242)  # the slider now starts from the new card
    assert any("0.4242" in c.value for c in at.caption)
    at.switch_page("pages/home.py").run()
    assert any("0.4242" in m.value for m in at.markdown)
    preds = pd.read_csv(_stored(app_env))
    expected = (preds.loc[preds["label"] == 0, "probability"] < 0.4242).mean()
    assert _figures(at)["Specificity"] == f"{expected:.4f}"


def test_changes_are_refused_unless_the_deployment_allows_them(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMO_ALLOW_CHANGES", "0")
    at = _open("pages/threshold.py")
    next(c for c in at.checkbox if "shipped model" in c.label).check().run()
    assert _save(at).disabled
    at.switch_page("pages/train.py").run()
    assert next(b for b in at.button if b.label == "Start").disabled


def test_predict_samples_show_probability_and_decision(app_env: Path) -> None:
    at = _open("pages/predict.py")
    at.toggle(key="use_samples").set_value(True).run()
    assert not at.exception
    probs = [float(m.value) for m in at.metric if m.label == "Probability of pneumonia"]
    # The default pair (first and last bundled film), scored here through the library: the page shows
    # their scores, highest first (worklist order), each with the decision the README's rule gives.
    from pneumo.app.settings import SAMPLES_DIR
    from pneumo.data.collection import read_item
    from pneumo.model.loading import load_model

    films = sorted(SAMPLES_DIR.glob("*/*.jpeg"))
    loaded = load_model(app_env / "models" / "model.keras")
    expected = sorted(loaded.predict([read_item(str(f)) for f in (films[0], films[-1])]).tolist(), reverse=True)
    assert probs == [round(p, 3) for p in expected]
    decisions = [m.value for m in at.markdown if m.value.startswith("Decision")]
    t = loaded.threshold
    rule = ["UNCERTAIN — review" if abs(p - t) < 0.05 else "PNEUMONIA" if p >= t else "NORMAL" for p in expected]
    assert len(decisions) == 2 and all(f"**{d}**" in m for d, m in zip(rule, decisions)), (decisions, rule)


def test_a_weak_model_carries_its_caution_on_overview_and_predict(
    app_env: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model validated on a handful of films (the tiny one) says so where it is used, not only on Train;
    the shipped model, validated out of fold on every training film, carries none."""
    weak = app_env / "weak"
    shutil.copytree(tiny_run, weak)
    n = json.loads((weak / "card.json").read_text())["validation"]["n"]
    shipped = [w.value for w in _open(PAGES[0]).warning if "carries a caution" in w.value]
    assert shipped == []
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(weak))
    home = _open(PAGES[0])
    assert any(f"validated on only {n} films" in w.value for w in home.warning), [w.value for w in home.warning]
    at = _open("pages/predict.py")
    at.toggle(key="use_samples").set_value(True).run()
    assert not at.exception
    assert any(f"validated on only {n} films" in w.value for w in at.warning), [w.value for w in at.warning]


def _fake_run(root: Path, name: str, aucs: list[float]) -> Path:
    run = root / name
    files.atomic_write_json(run / "config.json", {"model": "compact_cnn", "epochs": len(aucs)})
    runs.write_status(run, "finished", started=f"2026-01-01T00:00:0{len(aucs)}")
    for i, auc in enumerate(aucs):
        files.append_jsonl(
            run / "metrics.jsonl",
            {
                "type": "epoch",
                "epoch": i + 1,
                "epochs": len(aucs),
                "loss": 1 - auc,
                "val_loss": 1.1 - auc,
                "auc": auc,
                "val_auc": auc,
                "lr": 1e-3,
                "seconds": 1,
            },
        )
    return run


def test_train_page_lists_runs_and_shows_selected_curves(app_env: Path) -> None:
    _fake_run(app_env / "runs", "run-a", [0.7, 0.8])
    _fake_run(app_env / "runs", "run-b", [0.6, 0.75, 0.9])
    at = _open("pages/train.py")
    table = at.dataframe[0].value
    assert set(table["run"]) == {"run-a", "run-b"} and set(table["status"]) == {"finished"}
    watch = at.selectbox[-1]
    watch.set_value(1).run()
    charts = at.get("plotly_chart")
    assert charts, "no learning curves shown"
    spec = json.loads(charts[0].proto.spec)
    names = {trace.get("name", "") for trace in spec["data"]}
    assert any(n.startswith(at.selectbox[-1].format_func(1)) for n in names)


def test_a_running_run_shows_an_eta_only_once_steps_are_measured_and_says_when_it_is_stopping(app_env: Path) -> None:
    """The live view of a run in progress: at its first batch no ETA (the first step includes tracing), after
    a few measured steps the ETA; once Stop is asked for, "stopping…" at once, and no progress bar or Stop
    button of a run that is still training."""
    import os

    run = app_env / "runs" / "live"
    files.atomic_write_json(run / "config.json", {"model": "compact_cnn", "epochs": 2})
    runs.write_status(run, "running", pid=os.getpid(), started="2026-01-01T00:00:00+00:00", phase="training")

    def progress(batch: int) -> None:
        files.append_jsonl(
            run / "metrics.jsonl",
            {
                "type": "progress",
                "epoch": 1,
                "epochs": 2,
                "batch": batch,
                "batches": 40,
                "loss": 0.7,
                "eta_s": 270.0,
                "elapsed_s": 1.0,
            },
        )

    def bar_texts(at: AppTest) -> list[str]:
        return [e.proto.text for e in at.get("progress")]

    progress(1)
    at = _open("pages/train.py")
    assert not at.exception
    assert any("ETA after a few steps" in t for t in bar_texts(at)), bar_texts(at)
    progress(20)
    at.run()
    assert any("ETA 4.5 min" in t for t in bar_texts(at)), bar_texts(at)
    assert any(b.label == "Stop" for b in at.button)
    runs.request_stop(run)
    at.run()
    assert any("stopping…" in m.value for m in at.markdown)
    assert not any(b.label == "Stop" for b in at.button) and not any("ETA" in t for t in bar_texts(at))


def _draws(node: ast.AST, drawing: set[str]) -> list[str]:
    """Calls under node that put something on the page: any st.… call, or a function known to draw."""
    found = []
    body = node.body if isinstance(node, ast.FunctionDef) else [node]  # a function's decorators do not draw
    for call in (n for part in body for n in ast.walk(part) if isinstance(n, ast.Call)):
        func, chain = call.func, []
        while isinstance(func, ast.Attribute):
            chain.insert(0, func.attr)
            func = func.value
        if (
            isinstance(func, ast.Name)
            and func.id == "st"
            and chain[:1] not in (["get_option"], ["cache_data"], ["cache_resource"])
        ):
            found.append(".".join([func.id, *chain]))  # reading an option or clearing a cache draws nothing
        elif isinstance(func, ast.Name) and not chain and func.id in drawing:
            found.append(func.id)
    return found


def test_no_streamlit_element_inside_a_cached_function() -> None:
    """A cached function replays the elements it drew on a later hit, and a later session or rerun then
    fails (CacheReplayClosureError): nothing under st.cache_data or st.cache_resource draws, in any page or
    in pneumo.app.ui; progress for cached work goes through a callback made outside the cache."""
    sources = [
        ROOT / "streamlit_app.py",
        *sorted((ROOT / "pneumo" / "app").glob("*.py")),
        *sorted((ROOT / "pages").glob("*.py")),
    ]
    trees = {path: ast.parse(path.read_text()) for path in sources}
    # Functions of pneumo.app.ui and the pages that draw themselves (a progress bar, a chart): calling one from
    # a cached function is the same fault.
    functions = [f for tree in trees.values() for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]
    drawing: set[str] = set()
    while True:  # and what calls them, to any depth
        more = {f.name for f in functions if _draws(f, drawing)}
        if more <= drawing:
            break
        drawing |= more
    assert {"progress_bar", "summarize_with_bar"} <= drawing
    offences, cached = [], 0
    for path, tree in trees.items():
        for f in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            if not any("cache_data" in ast.unparse(d) or "cache_resource" in ast.unparse(d) for d in f.decorator_list):
                continue
            cached += 1
            offences += [f"{path.relative_to(ROOT)}:{f.lineno} {f.name} calls {c}" for c in _draws(f, drawing)]
    assert cached >= 5, "the cached functions were not found"  # the check looks where the caches are
    assert not offences, "\n".join(offences)
