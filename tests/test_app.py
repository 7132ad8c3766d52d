"""Every page through Streamlit's AppTest: renders on a fresh start, and widgets change what is shown."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pneumo.core import files
from pneumo.training import runs
from tests.conftest import ROOT

APP = str(ROOT / "streamlit_app.py")
PAGES = [
    "pages/home.py",
    "pages/predict.py",
    "pages/threshold.py",
    "pages/explore.py",
    "pages/train.py",
    "pages/monitor.py",
]


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
    side = card["input_size"]  # a model without a canonical framing reads the whole film
    assert any(f"input {side}×{side} grayscale · " in m.value for m in at.markdown)
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
    scores = loaded.predict([read_item(str(f)) for f in (films[0], films[-1])]).tolist()
    expected = sorted((loaded.card.probability(p) for p in scores), reverse=True)  # the card's calibrated scale
    assert probs == [round(p, 3) for p in expected]
    decisions = [m.value for m in at.markdown if m.value.startswith("Decision")]
    t = loaded.threshold
    by_score = sorted(scores, reverse=True)  # the decision is made on the score (the map keeps its order)
    rule = ["UNCERTAIN — review" if abs(p - t) < 0.05 else "PNEUMONIA" if p >= t else "NORMAL" for p in by_score]
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


# ------------------------------------------------------------------ rough edges of the pages


def _specs(at: AppTest) -> list[tuple[dict, dict]]:
    """Every Plotly chart on the page: (its figure, its config)."""
    return [
        (json.loads(c.proto.spec), json.loads(c.proto.config) if c.proto.config else {}) for c in at.get("plotly_chart")
    ]


def test_overview_says_which_pneumonias_each_sensitivity_counts(app_env: Path) -> None:
    """The rule's "sensitivity >= 0.97" is on the pneumonias the label audit trusts, the table's figure on all of
    them: the page says so, with both figures at the threshold in force, counted here by hand."""
    at = _open(PAGES[0])
    preds = pd.read_csv(_stored(app_env))
    t = json.loads((app_env / "models" / "card.json").read_text())["threshold"]
    positives = preds[preds["label"] == 1]
    trusted = positives[~positives["label_suspect"].astype(bool)]
    assert len(trusted) < len(positives)  # the shipped audit found suspects: the two figures differ
    every, kept = (positives["probability"] >= t).mean(), (trusted["probability"] >= t).mean()
    assert _figures(at)["Sensitivity"] == f"{every:.4f}"
    said = next(c.value for c in at.caption if "the label audit" in c.value and "Sensitivity" in c.value)
    assert f"**{every:.4f}** in the table is on **all {len(positives):,} pneumonia films**" in said
    assert f"**{len(trusted):,} the label audit trusts** it is **{kept:.4f}**" in said
    assert "≥ 0.97 is asked of these" in said


def test_overview_writes_the_label_audit_and_populations_in_words(app_env: Path) -> None:
    at = _open(PAGES[0])
    card = json.loads((app_env / "models" / "card.json").read_text())
    by_label = card["label_audit"]["suspects_by_label"]
    line = next(c.value for c in at.caption if c.value.startswith("Label audit"))
    assert "{" not in line and "'1'" not in line, line  # not a Python dict
    assert f"{by_label['1']:,} labelled PNEUMONIA" in line
    names = [y for spec, _ in _specs(at) for trace in spec["data"] if trace.get("type") == "bar" for y in trace["y"]]
    assert "normals, NORMAL2-IM series (later period)" in names and "normals, IM series (earlier period)" in names
    assert any(n.startswith("pneumonias, person series, patients ") for n in names), names
    assert not any(n.endswith(" normals") or n.startswith(("IM ", "NORMAL2-IM ")) for n in names), names


def test_no_chart_title_sits_under_the_toolbar(app_env: Path) -> None:
    """On a phone Plotly's toolbar stays in the top-right corner once tapped: every chart of the Overview,
    Threshold and Train pages keeps a band for it above its title (or has no toolbar)."""
    from pneumo.app.plots import MODEBAR_PX

    _fake_run(app_env / "runs", "run-a", [0.7, 0.8])
    checked = 0
    for page in (PAGES[0], "pages/threshold.py", "pages/train.py"):
        at = _open(page)
        for spec, config in _specs(at):
            if config.get("displayModeBar") is False:
                continue
            layout = spec["layout"]
            top = layout.get("margin", {}).get("t", 100)  # Plotly's default top margin is 100 px
            title = layout.get("title", {})
            if title.get("text"):
                assert title.get("yref") == "container" and title.get("pad", {}).get("t", 0) >= MODEBAR_PX, title
                assert top >= MODEBAR_PX + 30, (title["text"], top)
            subplot_titles = [a for a in layout.get("annotations", []) if a.get("yref") == "paper" and a["y"] >= 1]
            assert top >= MODEBAR_PX + (25 if subplot_titles else 0), (page, top)
            checked += 1
    assert checked >= 6


def _card_threshold(app_env: Path, threshold: float) -> None:
    path = app_env / "models" / "card.json"
    card = json.loads(path.read_text())
    card["threshold"] = threshold
    path.write_text(json.dumps(card))


def test_threshold_slider_shows_the_threshold_every_other_place_shows(app_env: Path) -> None:
    """A card threshold of 0.438099: the slider read 0.4380 (snapped down) while the card and the captions said
    0.4381. The slider holds the threshold itself, drawn to four decimals like every other place."""
    _card_threshold(app_env, 0.438099)
    at = _open("pages/threshold.py")
    slider = _threshold_slider(at)
    assert slider.proto.format == "%.4f" and slider.proto.step == pytest.approx(0.0001)
    assert f"{slider.value:.4f}" == "0.4381"
    assert any("Card threshold now: 0.4381" in c.value for c in at.caption)
    assert any("Threshold 0.4381, set by:" in m.value for m in at.markdown)
    # The figures are the card's threshold's own, counted by hand.
    preds = pd.read_csv(_stored(app_env))
    positives = preds.loc[preds["label"] == 1, "probability"]
    assert _metric(at, "Sensitivity") == f"{(positives >= 0.438099).mean():.3f}"


def test_threshold_page_says_which_rule_set_the_threshold(app_env: Path) -> None:
    at = _open("pages/threshold.py")
    card = json.loads((app_env / "models" / "card.json").read_text())

    def rule_line() -> str:
        return next(m.value for m in at.markdown if ", set by:" in m.value).replace("\\", "")  # markup escapes

    def target_box():
        return next(n for n in at.number_input if n.label == "Target recall")

    assert "the card's own rule" in rule_line() and target_box().value is None
    assert f"{card['threshold']:.4f}" in rule_line()
    target_box().set_value(0.9).run()
    assert "set by:** target recall 0.900" in rule_line() and target_box().value == pytest.approx(0.9)
    next(b for b in at.button if b.label == "Youden J").click().run()
    # The box no longer claims a target once Youden J set the threshold.
    assert "set by:** Youden J" in rule_line() and target_box().value is None
    assert f"Threshold {_threshold_slider(at).value:.4f}" in rule_line()
    _threshold_slider(at).set_value(0.5).run()
    assert "set by:** set by hand on the Threshold page" in rule_line()
    # Saved with the rule in force.
    next(c for c in at.checkbox if "shipped model" in c.label).check().run()
    _save(at).click().run()
    saved = json.loads((app_env / "models" / "card.json").read_text())
    assert saved["threshold"] == pytest.approx(0.5) and saved["threshold_rule"].startswith("set by hand")


def test_a_site_point_on_the_models_own_films_needs_a_confirmation(
    app_env: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibrating on the films the model trained on: the page warns, and the site point is saved only once
    the overlap is confirmed, and the confirmation is recorded with it in the card (as the main Save does)."""
    model = app_env / "tiny"
    shutil.copytree(tiny_run, model)
    data = tiny_run.parent / "data"
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(model))
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", str(data))
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["data_root"] = str(data)  # the sidebar's data folder (its widgets are not in a page's tree)
    at.run()
    at.switch_page("pages/threshold.py").run()
    assert any(o == f"Predict the data folder ({data.name})" for r in at.radio for o in r.options)
    next(t for t in at.text_input if t.label == "Site name").input("ward-3").run()
    next(b for b in at.button if b.label == "Calibrate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("model's own training or validation films" in w.value for w in at.warning)

    def save_site():
        return next(b for b in at.button if b.label == "Save site operating point")

    assert save_site().disabled
    next(c for c in at.checkbox if "these films overlap" in c.label).check().run()
    assert not save_site().disabled
    save_site().click().run()
    points = json.loads((model / "card.json").read_text())["site_operating_points"]
    assert [p["name"] for p in points] == ["ward-3"] and points[0]["leakage"]["overlap_confirmed"] is True


def _sample_audit(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A label audit of the bundled samples with five suspects of known scores (cleanlab's self-confidence:
    the lower, the more suspicious); returns their scores."""
    from pneumo.app.settings import SAMPLES_DIR
    from pneumo.evaluation import audit

    films = sorted(str(p) for p in SAMPLES_DIR.glob("*/*.jpeg"))
    scores = [0.30, 0.02, 0.45, 0.11, 0.07]
    frame = pd.DataFrame(
        {
            "path": films,
            "label": [int("PNEUMONIA" in f) for f in films],
            "probability": 0.5,
            "source": "out of fold",
            "score": [*scores, *[0.9] * (len(films) - len(scores))],
            "suspect": [True] * len(scores) + [False] * (len(films) - len(scores)),
        }
    )
    monkeypatch.setattr(audit, "audit_folder", lambda *args, **kwargs: frame)
    return scores


def _gallery_scores(at: AppTest) -> list[float]:
    return [float(c.value.rsplit("score ", 1)[1]) for c in at.caption if " · score " in c.value]


def test_explorer_shows_the_most_suspicious_labels_first(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _sample_audit(monkeypatch)
    at = _open("pages/explore.py")
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key=next(r.key for r in at.radio if r.label == "Sort")).value == "most suspicious first"
    assert _gallery_scores(at) == sorted(scores)  # the lowest self-confidence first
    at.radio(key=next(r.key for r in at.radio if r.label == "Sort")).set_value("least suspicious first").run()
    assert _gallery_scores(at) == sorted(scores, reverse=True)


def test_explorer_names_a_folder_without_splits_and_shuffles_with_a_button(app_env: Path) -> None:
    """The bundled samples are class folders: no split, where the chart said "train"; Shuffle is a button that
    draws other films, not a number box."""
    at = _open("pages/explore.py")
    spec = next(s for s, _ in _specs(at) if "Images per" in s["layout"]["title"]["text"])
    xs = {x for trace in spec["data"] for x in trace["x"]}
    assert xs == {"no splits (one folder)"} and "no splits" in spec["layout"]["title"]["text"]
    assert not any(n.label == "Shuffle" for n in at.number_input)

    def grid() -> list[str]:
        """The sample grid's films, by the captions of its pictures."""
        return [i.caption for image in at.get("image") for i in image.proto.imgs if i.caption.endswith("jpeg")]

    first = grid()
    assert any(c.value.startswith("Draw 1:") for c in at.caption)
    next(b for b in at.button if b.label == "Shuffle").click().run()
    assert any(c.value.startswith("Draw 2:") for c in at.caption)
    assert grid() != first and len(grid()) == len(first)


def _with_val_size(run: Path, n: int) -> Path:
    files.atomic_write_json(run / "data_summary.json", {"val_images": n, "train_images": 40})
    return run


def test_train_page_gives_the_validation_size_beside_every_val_figure(app_env: Path) -> None:
    """ "best val AUC 1.0000" came from 7 films: the size is said beside the figure, in the table and in the
    curves' legend; the epoch axis has whole-number ticks only."""
    run = _with_val_size(_fake_run(app_env / "runs", "run-a", [0.7, 0.8, 1.0]), 7)
    runs.write_status(run, "running", pid=None, started="2026-01-01T00:00:03")
    at = _open("pages/train.py")
    assert not at.exception, [e.value for e in at.exception]
    assert any("best val AUC 1.0000 (n = 7 val films)" in m.value for m in at.markdown), [m.value for m in at.markdown]
    table = at.dataframe[0].value
    assert table.loc[table["run"] == "run-a", "val films (n)"].tolist() == [7]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in spec["data"]} == {"run-a train", "run-a val, n = 7"}
    for axis in ("xaxis", "xaxis2", "xaxis3", "xaxis4"):
        assert spec["layout"][axis]["dtick"] == 1 and spec["layout"][axis]["tickformat"] == "d", axis


def test_start_pressed_again_says_the_visitors_run_is_queued(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second press of Start while this visitor's own run waits: an information, not a red "Not started"."""
    launched: list[Path] = []

    def launch(config: object, runs_root: Path, max_concurrent: int = 1, python: object = None) -> Path:
        # A run as launch() leaves it before its process writes anything: queued, no process to watch.
        busy = runs.active_runs(runs_root)
        if len(busy) >= max_concurrent:
            raise runs.RunFolderError(f"{busy[0].name} is still {busy[0].state}")
        run = Path(runs_root) / f"run-{len(launched)}"
        files.atomic_write_json(run / "config.json", {"model": "compact_cnn", "epochs": 1})
        runs.write_status(run, "queued", created="2026-01-01T00:00:00+00:00")
        launched.append(run)
        return run

    monkeypatch.setattr(runs, "launch", launch)
    at = _open("pages/train.py")
    next(b for b in at.button if b.label == "Start").click().run()
    assert len(launched) == 1 and not at.error
    next(b for b in at.button if b.label == "Start").click().run()
    assert len(launched) == 1
    assert not at.error, [e.value for e in at.error]
    assert any("Your run **run\\-0** is queued" in i.value for i in at.info), [i.value for i in at.info]


def _flower_png() -> bytes:
    """A colour photo of a flower as PNG: no chest film."""
    import io

    from PIL import Image

    yy, xx = np.mgrid[-1:1:240j, -1:1:240j]
    r, theta = np.hypot(xx, yy), np.arctan2(yy, xx)
    rgb = np.zeros((240, 240, 3), np.uint8)
    rgb[:] = (60, 140, 50)
    rgb[r < 0.55 + 0.3 * np.cos(6 * theta)] = (235, 120, 190)
    rgb[r < 0.22] = (250, 210, 40)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _viewer_figure(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1, len(charts)
    return json.loads(charts[0].proto.spec)


def _viewer_film(spec: dict) -> np.ndarray:
    import base64

    import cv2

    source = spec["data"][0]["source"]
    return cv2.imdecode(np.frombuffer(base64.b64decode(source.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)


def test_predict_a_photo_is_not_scored_in_large_type_its_maps_are_off_and_films_open_full_size(app_env: Path) -> None:
    """A flower photo beside a real film: the photo's probability sits in the greyed, small score of a card with no
    decision and its maps are off until asked for; the worklist gives it an empty bar and its reason. Each film opens
    in the full-size viewer: its own resolution, the window as set, the Grad-CAM layer on or off, the previous film
    of the worklist one button away (the photo's map layer off at first)."""
    import hashlib

    from pneumo.app import viewer
    from pneumo.app.settings import SAMPLES_DIR
    from pneumo.data.decode import load_xray
    from pneumo.data.pixels import to_uint8
    from pneumo.model.loading import load_model
    from pneumo.model.reading import read

    film = sorted((SAMPLES_DIR / "PNEUMONIA").glob("*.jpeg"))[0]
    flower = _flower_png()
    loaded = load_model(app_env / "models" / "model.keras")
    photo = read(loaded, flower, name="flower.png")
    assert photo.decision == "NOT ASSESSABLE"  # the case under test
    at = _open("pages/predict.py")
    at.file_uploader[0].set_value([("flower.png", flower, "image/png"), (film.name, film.read_bytes(), "image/jpeg")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # The photo (item 1): its probability only in the muted score; the film's (item 2) a score of its own.
    muted = at.get_by_key("cardmuted-0")
    assert [m.value for m in muted.get("metric")] == [f"{photo.shown:.3f}"]
    assert [m.value for m in at.get_by_key("cardscore-1").get("metric")] != []
    with pytest.raises(KeyError):
        at.get_by_key("cardmuted-1")
    # Its maps off (the film alone shows, card_rules), with a toggle to show them.
    at.get_by_key("cardmapsoff-0")
    at.get_by_key("cardmapson-1")
    assert [t.label for t in at.toggle] == ["Show the maps anyway"] and at.toggle[0].value is False
    # The worklist: an empty bar for the photo, its reason in its own column; the film's bar filled.
    table = next(h.proto.body for h in at.get("html") if "pn-worklist" in h.proto.body and "<table" in h.proto.body)
    first, second = table.split("<tbody>", 1)[1].split("</tr>")[:2]
    assert 'data-item="1"' in first and "pn-fill" not in first and "colour image" in first
    assert 'data-item="2"' in second and 'class="pn-fill" style="width:' in second
    at.toggle[0].set_value(True).run()
    at.get_by_key("cardmapson-0")
    with pytest.raises(KeyError):
        at.get_by_key("cardmapsoff-0")
    # The film full size: the film as decoded, one image pixel per film pixel, with the Grad-CAM layer.
    digest = hashlib.sha256(film.read_bytes()).hexdigest()
    at.button(key=f"view-1-{digest}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    native = to_uint8(load_xray(film.read_bytes(), name=film.name).pixels)
    spec = _viewer_figure(at)
    assert [t["type"] for t in spec["data"]] == ["image", "heatmap"]
    assert (_viewer_film(spec) == native).all()
    assert any("Film **2** of 2" in m.value for m in at.markdown)
    # The window as set: the levels through viewer.window.
    next(s for s in at.slider if s.label == "Window width").set_value(64).run()
    assert (_viewer_film(_viewer_figure(at)) == viewer.window(native, 128, 64)).all()
    next(t for t in at.toggle if t.label == "Grad-CAM layer").set_value(False).run()
    assert [t["type"] for t in _viewer_figure(at)["data"]] == ["image"]
    # The previous film of the worklist: the photo, its map layer off at first.
    next(b for b in at.button if b.label == "Previous film").click().run()
    assert any("Film **1** of 2" in m.value for m in at.markdown)
    assert next(t for t in at.toggle if t.label == "Grad-CAM layer").value is False
    spec = _viewer_figure(at)
    assert [t["type"] for t in spec["data"]] == ["image"] and _viewer_film(spec).shape == (240, 240)
    assert next(b for b in at.button if b.label == "Previous film").disabled


def test_a_film_read_again_says_when_it_was_read_and_the_history_lists_it(app_env: Path, tmp_path: Path) -> None:
    """A second visit that uploads the same pixels (under another name) is told the film was read before, when
    and with what result; the user's history lists both readings. The film's pixels are this test's own, so no
    other test's reading of a bundled sample counts."""
    import io

    from PIL import Image

    from pneumo.app.settings import SAMPLES_DIR

    sample = sorted((SAMPLES_DIR / "PNEUMONIA").glob("*.jpeg"))[1]
    pixels = np.asarray(Image.open(sample).convert("L"), dtype=np.int16)
    unique = np.clip(pixels + int(tmp_path.stat().st_ino % 7) + 3, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(unique).save(buffer, format="PNG")
    notes = []
    for name in ("first-visit.png", "second-visit.png"):
        at = _open("pages/predict.py")
        at.file_uploader[0].set_value([(name, buffer.getvalue(), "image/png")])
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        notes.append([c.value for c in at.caption if "Read before on" in c.value])
    assert notes[0] == [] and len(notes[1]) == 1, notes
    assert "PNEUMONIA" in notes[1][0] or "NORMAL" in notes[1][0] or "UNCERTAIN" in notes[1][0]
    listed = next(d.value for d in at.dataframe if "film" in d.value.columns)
    assert {"first-visit.png", "second-visit.png"} <= set(listed["film"])


def test_predict_asks_the_database_once_per_batch_and_again_only_for_a_saved_verdict(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every click reruns the page: the verdicts, the films read before and the history are read when a batch
    arrives, and a saved verdict is read again for its own reading, not on every rerun."""
    from pneumo.app import verdicts
    from pneumo.integrations import records

    asked: list[str] = []

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            asked.append(name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(verdicts, "_latest_verdicts", counted("verdicts", verdicts._latest_verdicts))
    monkeypatch.setattr(records, "read_before", counted("read before", records.read_before))
    monkeypatch.setattr(records, "recent_readings", counted("history", records.recent_readings))
    at = _open("pages/predict.py")
    assert asked == ["history"]  # the empty page shows the user's history (no batch to key it by)
    asked.clear()
    at.toggle(key="use_samples").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(asked) == ["history", "read before", "verdicts"]
    next(s for s in at.slider if s.label == "Heatmap opacity").set_value(0.6).run()
    at.run()
    assert sorted(asked) == ["history", "read before", "verdicts"]  # two reruns, nothing asked again
    agree = next(b for b in at.button if b.label.startswith(("Agree", "Reader:")))
    agree.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(asked) == ["history", "read before", "verdicts", "verdicts"]  # the saved verdict, read back
    assert any(c.value.startswith("Verdict: ") for c in at.caption), [c.value for c in at.caption]
    at.run()
    assert len(asked) == 4


def _verdicts_page() -> None:
    import streamlit as st

    from pneumo.app.verdicts import load_verdicts, verdict_buttons

    load_verdicts([11, 12])
    for reading_id in (11, 12):
        verdict_buttons(reading_id, "PNEUMONIA")
    st.button("rerun")


def test_a_database_that_cannot_be_read_is_said_on_each_card_and_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumo.app import verdicts
    from pneumo.integrations.records import RecordsError

    asked: list[list[int]] = []

    def refuse(ids: list[int], url: str) -> dict:
        asked.append(list(ids))
        raise RecordsError("database is locked")

    monkeypatch.setattr(verdicts, "_latest_verdicts", refuse)
    monkeypatch.setenv("PNEUMO_USER", "dr app")  # verdicts are given by a named reader
    at = AppTest.from_function(_verdicts_page, default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [c.value for c in at.caption] == ["Verdicts unavailable: database is locked"] * 2
    assert not any(b.label.startswith("Agree") for b in at.button)
    at.button[0].click().run()
    assert asked == [[11, 12]]  # both readings in one query, and not again on the rerun


def test_a_reading_of_a_file_opens_again_with_its_map_until_the_file_changes(
    app_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict --log reads a film from disk; the same user's Predict page lists it under "Your recent readings"
    and draws it again from the file with its stored decision and a map, when the file lies in a folder the app may
    open. Once the file holds other pixels, it is refused in one line and nothing is drawn."""
    import subprocess
    import sys

    from PIL import Image

    user = f"reopen-{tmp_path.stat().st_ino}"
    monkeypatch.setenv("PNEUMO_USER", user)
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", str(tmp_path / "ward"))  # the app may open files there only
    film = tmp_path / "ward" / "film.png"
    outside = tmp_path / "elsewhere" / "other.png"  # logged by the command line, outside what the app may open
    for path in (film, outside):
        path.parent.mkdir()
    ramp = np.add.outer(np.linspace(0, 200, 256), np.linspace(0, 55, 256)).astype(np.uint8)
    Image.fromarray(ramp).save(film)
    Image.fromarray(ramp[::-1]).save(outside)
    done = subprocess.run(
        [sys.executable, "-m", "pneumo", "predict", "--log", "--json", str(film), str(outside)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    decision = json.loads(done.stdout)[0]["prediction"]
    at = _open("pages/predict.py")
    pick = next(s for s in at.selectbox if s.label == "Open a reading again")
    assert len(pick.options) == 1 and "film.png" in pick.options[0]  # other.png is listed, not offered
    charts = len(at.get("plotly_chart"))
    pick.set_value(int(pick.options[0].split("·")[0].strip().lstrip("#"))).run()
    assert not at.exception, [e.value for e in at.exception]
    line = next(m.value for m in at.markdown if "found again at" in m.value)
    assert f"**{decision}**" in line and str(film) in line and "pixel hash" in line
    assert len(at.get("plotly_chart")) == charts + 1  # the film drawn again
    Image.fromarray(255 - ramp).save(film)  # other pixels at the same path
    at.run()
    assert any("holds other pixels" in e.value for e in at.error), [e.value for e in at.error]
    assert not any("found again at" in m.value for m in at.markdown)


def test_threshold_calibration_chart_shows_the_probability_a_reading_shows(app_env: Path) -> None:
    """A card that maps scores to probabilities draws both curves (the reader is told the probability, not the
    score); a card without the map draws the score alone."""
    import json as _json

    def traces(at: AppTest) -> list[str]:
        for chart in at.get("plotly_chart"):
            figure = _json.loads(chart.proto.spec)
            if figure.get("layout", {}).get("title", {}).get("text") == "Calibration":
                return [t.get("name") for t in figure["data"]]
        raise AssertionError("no calibration chart")

    assert traces(_open("pages/threshold.py")) == ["perfect", "score", "probability shown"]
    card = app_env / "models" / "card.json"
    data = _json.loads(card.read_text())
    data.pop("probability_calibration")  # extras are stored at the top level of the card
    card.write_text(_json.dumps(data))
    assert traces(_open("pages/threshold.py")) == ["perfect", "model"]
