"""The pages' texts (pneumo.app.texts): outside text escaped, each wording as the pages show it, written out here
by hand; and the modules that hold the pages' rules import without Streamlit."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from pneumo.app import texts
from pneumo.app.sessions import HeldUpload, Release
from pneumo.evaluation.card_figures import TrustedSensitivity
from pneumo.evaluation.drift import DriftResult
from tests.conftest import ROOT


def test_outside_text_shows_as_the_characters_it_holds() -> None:
    assert texts.plain("[click](http://x) *bold* :red[alarm]") == r"\[click\]\(http\://x\) \*bold\* \:red\[alarm\]"
    assert texts.plain("two\nlines\tand  spaces") == "two lines and spaces"
    assert texts.plain(ValueError("bad <b>")) == "bad \\<b\\>"
    assert texts.code_span("/data/x") == "`/data/x`"
    assert texts.code_span("/data/a`b") == "``/data/a`b``"  # a backtick cannot end the span
    assert texts.code_span("`x") == "`` `x ``"


def test_a_caution_and_the_operating_point_are_escaped() -> None:
    assert (
        texts.caution_line("validated on only 7 films")
        == "**This model carries a caution:** validated on only 7 films."
    )
    assert texts.caution_line("see [here](x)") == "**This model carries a caution:** see \\[here\\]\\(x\\)."
    assert texts.operating_point_line(None, 0.43811, "recall >= 0.97") == (
        "**Operating point in force: shipped**, threshold **0.4381**  \nrecall \\>\\= 0\\.97"
    )
    assert texts.operating_point_line("ward-3", 0.2, "r").startswith("**Operating point in force: ward\\-3**")


def test_predict_names_the_scale_of_a_calibrated_threshold() -> None:
    card = SimpleNamespace(
        threshold_rule="rule",
        calibrated=True,
        extra={"probability_calibration": {"prevalence": 0.74}},
        probability=lambda score: 0.5,
    )
    loaded = SimpleNamespace(card=card, operating_point="shipped", threshold=0.43)
    assert texts.predict_operating_point(loaded) == (
        "Operating point **shipped**, threshold **0.4300**  \nrule  \nProbabilities are calibrated out of fold (at "
        "the training films' 74% pneumonia); the threshold is the model's score 0.4300, probability 0.500."
    )
    card.calibrated = False
    assert texts.predict_operating_point(loaded) == "Operating point **shipped**, threshold **0.4300**  \nrule"


def test_drift_is_worded_alike_for_a_folder_and_a_batch() -> None:
    shifted = {"shifted": True, "method": "KS", "n": 40, "p_value": 0.0012}
    folder = texts.folder_drift_notice(shifted)
    assert folder.kind == "error"
    assert folder.text == (
        "**This folder is unlike the films the operating point was set on** (KS, n \\= 40, p \\= 0\\.0012): its "
        "figures here will not match the card's; calibrate to this site below."
    )
    calm = texts.folder_drift_notice({"shifted": False, "method": "KS", "n": 40, "p_value": 0.5})
    assert (calm.kind, calm.text) == ("caption", "Drift check: no shift detected (KS, n \\= 40, p \\= 0\\.5).")
    none = texts.folder_drift_notice({"available": False, "reason": "no reference beside the model"})
    assert (none.kind, none.text) == ("caption", "Drift check: no reference beside the model.")
    assert texts.folder_drift_notice({}).text == "Drift check: not available."

    result = DriftResult(shifted=False, p_value=0.5, n=40, method="KS", reference="r")
    batch = texts.batch_drift_notice(result, None)
    assert (batch.kind, batch.text) == ("caption", calm.text)  # the same words on both pages
    result.shifted, result.p_value = True, 0.0012
    batch = texts.batch_drift_notice(result, None)
    assert batch.kind == "error"
    assert batch.text.startswith(
        r"**This batch is unlike the films the operating point was set on** (KS, n \= 40, p \= 0\.0012). This batch "
        r"of 40 films is unlike the films the operating point was set on \(p \= 0\.0012\)\: its sensitivity"
    )
    assert texts.batch_drift_notice(None, "3 films: too few").text == r"Drift check: 3 films\: too few."
    assert texts.drift_summary(True, "KS", 40, 0.0012) == "shifted (KS, n = 40, p = 0.0012)"
    assert texts.drift_summary(False, "KS", 40, 0.5) == "no shift detected (KS, n = 40, p = 0.5)"
    assert texts.last_drift_line("shifted (KS)") == "Drift of the last batch read on Predict: shifted \\(KS\\)"


def test_leakage_and_the_labelled_sets_in_words() -> None:
    leak = {"n": 50, "train": 10, "validation": 5, "fraction": 0.3}
    assert texts.leak_warning(leak) == (
        "**15 of 50 images (30%) in this folder are images this model was trained on (10) or validated on (5).** "
        "Figures here are optimistic, and a threshold tuned on them will not hold on new patients."
    )
    assert texts.site_leak_warning(leak) == (
        "15 of these films are the model's own training or validation films: the site figures are optimistic."
    )
    assert texts.stored_set("out-of-fold", "oof_predictions.csv", None) == (
        "out-of-fold predictions stored with the model (oof_predictions.csv): films the model's own networks never saw"
    )
    assert texts.stored_set("validation", "val.csv", "10 % of patients").endswith("(val.csv): 10 % of patients")
    assert texts.folder_set("small", 12) == "the data folder small (12 films), predicted now"
    assert texts.threshold_line(0.43811, "target recall 0.900") == (
        "**Threshold 0.4381, set by:** target recall 0\\.900"
    )
    assert texts.card_threshold_line(0.5, "set by *hand*") == "Card threshold now: 0.5000 — set by \\*hand\\*"
    assert texts.unreadable_film(SimpleNamespace(row=7), ValueError("truncated")) == "row 7: truncated"
    assert texts.unreadable_film(SimpleNamespace(), OSError("gone")) == "a film of this folder: gone"
    assert texts.stored_unusable(ValueError("no label column")) == (
        "The stored predictions cannot be used: no label column"
    )
    assert texts.not_saved(PermissionError("card.json is read-only")) == "Not saved: card\\.json is read\\-only"


def _released(names: list[str], budget: str) -> list[Release]:
    return [Release(HeldUpload("s", f"f{i}", name, 1, float(i)), budget) for i, name in enumerate(names)]


def test_released_uploads_are_named_with_the_budget_they_went_for() -> None:
    assert texts.megabytes(512 * 2**20) == "512 MB"
    assert texts.megabytes(2 * 2**30) == "2,048 MB"
    assert texts.megabytes(2**19) == "0.50 MB"
    one = texts.release_notice(_released(["film0.dcm"], "session"), 2**20, 2**30)
    assert one == (
        "**1 earlier upload(s) released**, the oldest first: this session may hold 1.00 MB of uploads. No longer "
        "held: film0\\.dcm. Upload them again, in a smaller batch, to read them."
    )
    seven = texts.release_notice(_released([f"f{i}" for i in range(7)], "server"), 2**20, 20 * 2**20)
    assert "the server holds at most 20 MB of every visitor's uploads" in seven
    assert "No longer held: f0, f1, f2, f3, f4 and 2 more." in seven


def test_the_overview_s_figures_in_words() -> None:
    assert texts.stored_figures_heading("out-of-fold", True) == "##### Out-of-fold figures (in-distribution)"
    assert texts.stored_figures_heading("validation", False) == "##### Validation figures (shifted hold-out)"
    line = texts.trusted_sensitivity_line(0.95, TrustedSensitivity(1200, 1100, 0.97182), 0.97)
    assert line == (
        "Sensitivity **0.9500** in the table is on **all 1,200 pneumonia films**, suspected label errors included; "
        "on the **1,100 the label audit trusts** it is **0.9718** (the rule's sensitivity ≥ 0.97 is asked of these)."
    )
    assert texts.trusted_sensitivity_line(0.5, TrustedSensitivity(2, 0, None), None).endswith("it is **—**.")
    audit = {"suspects": 40, "n": 5216, "suspect_share": 40 / 5216, "suspects_by_label": {"1": 32, "0": 8}}
    assert texts.label_audit_line(audit) == (
        "Label audit: 40 of 5,216 training films (0.8%) are suspected label errors (8 labelled NORMAL and 32 labelled "
        "PNEUMONIA); the threshold's recall target is asked of the others. See the Dataset Explorer."
    )


def test_a_run_s_status_marks_its_state_and_escapes_its_device() -> None:
    assert texts.run_status("running", "GPU_0 (H100)") == (
        "**Status:** :green[:material/play_circle:] `running`  \nGPU\\_0 \\(H100\\)"
    )
    assert texts.run_status("damaged", None) == "**Status:** :material/help: `damaged`  \n"


def test_the_modules_holding_the_pages_rules_import_without_streamlit() -> None:
    """What the pages compose is checked without Streamlit: these modules must not need it."""
    modules = [
        "pneumo.app.texts",
        "pneumo.app.worklist",
        "pneumo.app.viewer",
        "pneumo.evaluation.tuning",
        "pneumo.evaluation.review",
        "pneumo.evaluation.card_figures",
        "pneumo.data.overview",
        "pneumo.training.watch",
        "pneumo.training.form",
    ]
    script = "import sys\nsys.modules['streamlit'] = None\n" + "".join(f"import {m}\n" for m in modules)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_pacs_source_names_what_it_screens_and_what_it_skipped() -> None:
    assert texts.screen_label(0) == "Screen 0 selected studies"
    assert texts.screen_label(1) == "Screen 1 selected study"
    assert texts.screen_label(2) == "Screen 2 selected studies"
    skipped = [f"s{i}/i.dcm: not a chest film" for i in range(8)]
    line = texts.skipped_line(skipped)
    assert line.startswith("8 image(s) not read: s0/i\\.dcm\\: not a chest film; s1/i")
    assert line.count(";") == 5  # six named


def test_a_reopened_reading_says_what_it_decided_and_where_its_film_was_found() -> None:
    row = {
        "id": 7,
        "time": "2026-12-07T08:01:02.5",
        "model": "ens[1](x)",
        "operating_point": "shipped",
        "threshold": 0.28414,
        "decision": "PNEUMONIA",
        "probability": 0.9312,
    }
    line = texts.reopened_line(row, "/ward/a`b.png", "pixel hash")
    assert line.startswith("Reading **#7** · 2026-12-07 08:01:02 UTC · ens\\[1\\]\\(x\\) at shipped")
    assert "(threshold 0.2841): **PNEUMONIA**, score 0.931" in line
    assert "found again at ``/ward/a`b.png`` (recognised by its pixel hash)" in line
    rejected = texts.reopened_line({**row, "decision": None, "probability": None}, "x.png", "instance UID")
    assert "**no decision** · found again" in rejected


def test_the_input_line_says_when_films_are_cropped_to_the_lungs() -> None:
    assert texts.input_line(224, "none") == "224×224 grayscale"
    assert texts.input_line(224, "lungs") == "224×224 grayscale, each film cropped to its lung field first"
