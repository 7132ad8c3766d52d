from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, make_folder


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "pneumo", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def _in_process(model: Path, paths: list[Path]) -> np.ndarray:
    """The same films scored in this process, through the library rather than the command line."""
    from pneumo.data.collection import read_item
    from pneumo.model.loading import load_model

    return load_model(model).predict([read_item(str(p)) for p in paths])


def _decision(probability: float, threshold: float) -> str:
    """The rule stated in the README, by hand: within 0.05 of the threshold a second look, else the side."""
    if abs(probability - threshold) < 0.05:
        return "UNCERTAIN — review"
    return "PNEUMONIA" if probability >= threshold else "NORMAL"


def test_predict_json_contract_and_exit_status(tiny_run: Path, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=1, size=64)
    good = next((data / "PNEUMONIA").iterdir())
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"%PDF-1.4 definitely a document")
    from PIL import Image

    photo = tmp_path / "holiday.png"  # a colour photo: scored, but given no decision
    picture = Image.new("RGB", (64, 64), (40, 160, 60))
    picture.paste((200, 40, 40), (0, 0, 32, 64))  # two colours: a constant image is refused unread
    picture.save(photo)
    twin = tmp_path / "again.png"  # the good film's pixels under another name
    shutil.copy(good, twin)
    out = _cli(
        "predict",
        "--model",
        str(tiny_run / "model.keras"),
        "--json",
        "--cam",
        str(tmp_path / "cams"),
        str(good),
        str(bad),
        str(photo),
        str(twin),
    )
    assert out.returncode == 2, out.stderr
    results = json.loads(out.stdout)
    assert [set(r) >= {"path", "probability", "prediction", "threshold", "error", "repeat_of"} for r in results] == [
        True
    ] * 4
    ok, rejected, wrong, again = results
    # Scored all the same: the model's own probability for the photo, read as the library reads it.
    assert wrong["prediction"] == "NOT ASSESSABLE"
    assert wrong["probability"] == pytest.approx(float(_in_process(tiny_run / "model.keras", [photo])[0]), abs=1e-5)
    assert any("colour image" in w for w in wrong["warnings"])
    assert again["repeat_of"] == str(good) and again["probability"] == ok["probability"] and ok["repeat_of"] is None
    assert any(w.startswith("repeats item 1") for w in again["warnings"])
    threshold = json.loads((tiny_run / "card.json").read_text())["threshold"]
    assert ok["probability"] == pytest.approx(float(_in_process(tiny_run / "model.keras", [good])[0]), abs=1e-5)
    assert ok["threshold"] == threshold and ok["prediction"] == _decision(ok["probability"], threshold)
    assert ok["error"] is None
    assert rejected["probability"] is None and "PDF" in rejected["error"] and "fake.png" in rejected["error"]
    assert (tmp_path / "cams" / f"{good.stem}_gradcam.png").read_bytes().startswith(b"\x89PNG")
    # The tiny model was validated on a handful of films: every reading carries that caution, and the text
    # output says it before any decision.
    n = json.loads((tiny_run / "card.json").read_text())["validation"]["n"]
    assert n < 200 and all(any(f"validated on only {n} films" in c for c in r["cautions"]) for r in results)
    only_good = _cli("predict", "--model", str(tiny_run / "model.keras"), str(good))
    assert only_good.returncode == 0
    assert f"caution: this model validated on only {n} films" in only_good.stderr


def test_evaluate_uses_card_threshold(tiny_run: Path, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=6, size=64, seed=9)
    out = _cli(
        "evaluate", "--model", str(tiny_run / "model.keras"), "--data", str(data), "--out", str(tmp_path / "r.json")
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "n",
        "roc_auc",
        "pr_auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "threshold",
        "confusion",
    ):
        assert key in report
    assert report["n"] == 12
    assert report["threshold"] == json.loads((tiny_run / "card.json").read_text())["threshold"]


def test_summarize_json_and_bad_path(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=3)
    out = _cli("summarize", str(data), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["n_images"] == 6
    missing = _cli("summarize", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.slow
def test_integration_on_real_xrays(tmp_path: Path, shared_train: Path) -> None:
    """One epoch on ~200 real images, then evaluate and predict through the CLI."""
    subset = tmp_path / "subset"
    for cls in ("NORMAL", "PNEUMONIA"):
        (subset / cls).mkdir(parents=True)
        for path in sorted((shared_train / cls).iterdir())[:100]:
            shutil.copy(path, subset / cls / path.name)
    run = tmp_path / "run"
    out = _cli("train", "--data", str(subset), "--epochs", "1", "--image-size", "128", "--out", str(run))
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    ev = _cli("evaluate", "--model", str(run / "model.keras"), "--data", str(subset), "--out", str(tmp_path / "r.json"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 200
    sample = next((subset / "PNEUMONIA").iterdir())
    pr = _cli("predict", "--model", str(run / "model.keras"), "--json", str(sample))
    assert pr.returncode == 0
    assert json.loads(pr.stdout)[0]["probability"] == pytest.approx(
        float(_in_process(run / "model.keras", [sample])[0]), abs=1e-5
    )


def test_predict_keeps_its_json_contract_with_a_broken_dicom_in_the_batch(tiny_run: Path, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", n_per_class=1, size=64)
    good = next((data / "PNEUMONIA").iterdir())
    twin = tmp_path / "other" / good.name  # the same file name in another folder
    twin.parent.mkdir()
    shutil.copy(next((data / "NORMAL").iterdir()), twin)
    import io

    import pydicom

    from tests.test_imaging import _dicom, _ramp

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    ds.PixelData = ds.PixelData[:100]  # the header promises 64×64 pixels the file does not hold
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    unwindowed = tmp_path / "window0.dcm"  # a display window of width 0: read at full range, and said so
    unwindowed.write_bytes(_dicom(_ramp(), window=(2000, 0)))
    out = _cli(
        "predict",
        "--model",
        str(tiny_run),
        "--json",
        "--cam",
        str(tmp_path / "cams"),
        str(good),
        str(bad),
        str(twin),
        str(unwindowed),
    )
    results = json.loads(out.stdout)
    assert out.returncode == 2 and len(results) == 4
    assert results[3]["probability"] is not None and "window" in results[3]["warnings"][0], results[3]
    results = results[:3]
    assert results[1]["probability"] is None and "bad.dcm" in results[1]["error"]
    # The good films keep their own scores, in input order (the twin is a normal film under the same name).
    expected = _in_process(tiny_run, [good, twin])
    assert [results[0]["probability"], results[2]["probability"]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(isinstance(r["warnings"], list) for r in results)
    assert len(list((tmp_path / "cams").iterdir())) == 3  # two inputs with one stem: two files; the DICOM's own
    assert "cuInit" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("threshold", ["NaN", "5", '"high"', "null"])
def test_a_bad_card_threshold_is_refused_with_one_line(tiny_run: Path, tmp_path: Path, threshold: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = (run / "card.json").read_text()
    card = json.loads(card)
    (run / "card.json").write_text(json.dumps(card).replace(json.dumps(card["threshold"]), threshold, 1))
    out = _cli(
        "predict", "--model", str(run), "--json", str(ROOT / "data" / "samples" / "NORMAL" / "IM-0152-0001.jpeg")
    )
    assert out.returncode == 2 and "card.json" in out.stderr and "threshold" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_user_errors_exit_2_with_one_line(tiny_run: Path, tmp_path: Path) -> None:
    sample = str(ROOT / "data" / "samples" / "NORMAL" / "IM-0152-0001.jpeg")
    (tmp_path / "afile").write_text("x")
    for args in (
        ["predict", "--model", str(tiny_run), "--threshold", "5", sample],
        ["train", "--data", str(tmp_path), "--epochs", "0", "--out", str(tmp_path / "r")],
        ["train", "--data", str(tmp_path), "--batch-size", "0", "--out", str(tmp_path / "r")],
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "afile")],
        ["evaluate", "--model", str(tmp_path / "afile"), "--data", str(tmp_path), "--out", str(tmp_path / "r.json")],
    ):
        out = _cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, (args, out.stderr)


@pytest.mark.parametrize("error", [TypeError, KeyError])
def test_a_programming_error_is_a_traceback_not_a_user_error(
    error: type[Exception], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """A bug in a command (here summarize made to raise) reaches the caller with its traceback; only user
    errors are turned into exit status 2 and one line."""
    from pneumo import cli

    def broken(args: object) -> int:
        raise error("a bug in the command, not in what the user gave")

    monkeypatch.setattr(cli, "cmd_summarize", broken)
    with pytest.raises(error, match="a bug in the command"):
        cli.main(["summarize", str(tmp_path)])
    assert "error: " not in capsys.readouterr().err


def test_a_config_value_of_the_wrong_type_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A --config file with a number given as text is refused before training, naming the field: one line,
    exit status 2, and no run folder made."""
    config = tmp_path / "config.json"
    for values, field in (({"epochs": "3"}, "epochs"), ({"learning_rate": [0.1]}, "learning_rate")):
        config.write_text(json.dumps({"data": str(tmp_path), **values}))
        rc, _, err = _main(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run"))
        assert rc == 2 and field in err, err
        _one_error_line(err)
        assert not (tmp_path / "run").exists()


def test_predict_reads_the_images_of_a_folder(tiny_run: Path, tmp_path: Path) -> None:
    """A folder stands for every image file under it, sorted, as for drift; files beside it keep their place."""
    data = make_folder(tmp_path / "d", n_per_class=2, size=64)
    (data / "NORMAL" / "notes.txt").write_text("not an image: not a film of the folder")
    single = make_folder(tmp_path / "e", n_per_class=1, size=64, seed=3) / "NORMAL"
    one = next(single.iterdir())
    out = _cli("predict", "--model", str(tiny_run), "--json", str(data), str(one))
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    films = sorted((data / "NORMAL").glob("*.png")) + sorted((data / "PNEUMONIA").glob("*.png"))
    assert [r["path"] for r in results] == [str(p) for p in films] + [str(one)]
    expected = _in_process(tiny_run, [*films, one])
    assert [r["probability"] for r in results] == pytest.approx(expected.tolist(), abs=1e-5)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = _cli("predict", "--model", str(tiny_run), str(empty))
    assert refused.returncode == 2 and "no image files" in refused.stderr and str(empty) in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_evaluate_record_appends_an_external_evaluation(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = make_folder(tmp_path / "d", n_per_class=6, size=64, seed=11)
    for name in ("first", "second"):
        out = _cli(
            "evaluate", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "r.json"), "--record", name
        )
        assert out.returncode == 0, out.stderr
    from pneumo.core.card import ModelCard

    evaluations = ModelCard.read(run / "card.json").external_evaluations
    assert [e["name"] for e in evaluations] == ["first", "second"]
    assert (
        evaluations[0]["n"] == 12 and len(evaluations[0]["file_list_sha256_16"]) == 16 and "roc_auc" in evaluations[0]
    )


def _main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from pneumo.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error_line(err: str) -> None:
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_evaluate_out_never_writes_over_what_it_did_not_make(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = make_folder(tmp_path / "d", n_per_class=3, size=64, seed=5)
    film = next((data / "NORMAL").iterdir())
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    before = {p: p.read_bytes() for p in [run / "model.keras", run / "card.json", film, notes]}
    for out, message in (
        (run / "model.keras", "inside the model's folder"),
        (run / "card.json", "inside the model's folder"),
        (run / "new.json", "inside the model's folder"),
        (film, "inside the --data folder"),
        (data / "report.json", "inside the --data folder"),
        (notes, "not an earlier evaluation report"),
        (tmp_path, "is a folder"),
    ):
        rc, _, err = _main(capsys, "evaluate", "--model", str(run), "--data", str(data), "--out", str(out))
        assert rc == 2 and message in err, (out, err)
        _one_error_line(err)
    assert {p: p.read_bytes() for p in before} == before
    assert not (run / "new.json").exists() and not (data / "report.json").exists()
    report = tmp_path / "report.json"
    for _ in range(2):  # new, then an earlier report of its own: replaced
        rc, _, err = _main(capsys, "evaluate", "--model", str(run), "--data", str(data), "--out", str(report))
        assert rc == 0, err
    assert json.loads(report.read_text())["n"] == 6
    report.chmod(0o444)
    rc, _, err = _main(capsys, "evaluate", "--model", str(run), "--data", str(data), "--out", str(report))
    assert rc == 2 and "read-only" in err
    _one_error_line(err)


def test_record_refuses_a_read_only_card_and_writes_nothing(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = make_folder(tmp_path / "d", n_per_class=3, size=64, seed=6)
    card = run / "card.json"
    card.chmod(0o444)
    before = card.read_bytes()
    rc, _, err = _main(
        capsys,
        "evaluate",
        "--model",
        str(run),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r.json"),
        "--record",
        "site A",
    )
    assert rc == 2 and "read-only" in err and "card.json" in err
    _one_error_line(err)
    assert card.read_bytes() == before and (card.stat().st_mode & 0o777) == 0o444
    assert not (tmp_path / "r.json").exists()  # a refused request writes nothing


def test_a_refused_train_out_leaves_the_folder_exactly_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_folder(tmp_path / "d", n_per_class=3, size=48)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    shipped = tmp_path / "models"
    shipped.mkdir()
    (shipped / "model.keras").write_bytes(b"precious")
    for folder, message in ((mine, "not a pneumo run"), (shipped, "no run status")):
        before = sorted(p.name for p in folder.iterdir())
        rc, _, err = _main(capsys, "train", "--data", str(data), "--epochs", "1", "--out", str(folder))
        assert rc == 2 and message in err, err
        _one_error_line(err)
        assert sorted(p.name for p in folder.iterdir()) == before  # no .lock, nothing else


def test_predict_cam_never_overwrites_and_concurrent_runs_never_share_a_file(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from tests.conftest import synthetic_xray, write_png

    rng = np.random.default_rng(3)
    names = [f"IM-00{i}-0001.png" for i in range(4)]
    films = {
        side: [write_png(tmp_path / side / n, synthetic_xray(rng, size)) for n in names]
        for side, size in (("a", 64), ("b", 80))
    }  # one film name each, different patients (and sizes)
    cams = tmp_path / "cams"
    cams.mkdir()
    users = cams / "IM-000-0001_gradcam.png"
    users.write_bytes(b"a reader's own file")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pneumo",
                "predict",
                "--model",
                str(tiny_run),
                "--json",
                "--cam",
                str(cams),
                *map(str, films[side]),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side in ("a", "b")
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outputs]
    results = {side: json.loads(out) for side, (out, _) in zip(("a", "b"), outputs)}
    cam_paths = [r["cam"] for side in results for r in results[side]]
    assert len(set(cam_paths)) == 8 and str(users) not in cam_paths
    assert users.read_bytes() == b"a reader's own file"
    for side, size in (("a", 64), ("b", 80)):
        for entry, film in zip(results[side], films[side]):
            assert entry["path"] == str(film)
            assert Image.open(entry["cam"]).size == (size, size)  # each overlay shows its own run's film
    assert sorted(p.name for p in cams.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    assert len(list(cams.iterdir())) == 9


def test_predict_cam_on_a_full_disk_still_prints_the_json_and_leaves_no_partial_file(
    tiny_run: Path, tmp_path: Path
) -> None:
    import resource

    data = make_folder(tmp_path / "d", n_per_class=2, size=96)
    films = sorted(str(p) for p in data.rglob("*.png"))
    cams = tmp_path / "cams"
    cams.mkdir()

    def small_disk() -> None:  # every file this process writes stops at 1 KB, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "pneumo", "predict", "--model", str(tiny_run), "--json", "--cam", str(cams), *films],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=small_disk,
    )
    assert out.returncode == 2, out.stderr
    results = json.loads(out.stdout)
    assert [r["path"] for r in results] == films
    expected = _in_process(tiny_run, [Path(f) for f in films])
    for r, p in zip(results, expected):
        assert (
            r["probability"] == pytest.approx(float(p), abs=1e-5) and r["cam"] is None
        )  # scored; only the overlay failed
        assert "Grad-CAM overlay not written" in r["error"] and Path(r["path"]).name in r["error"]
    assert list(cams.iterdir()) == []  # no truncated PNG, no temporary file
    assert "Traceback" not in out.stderr


CARD_DAMAGE = {
    "extra that is text": lambda c: {**c, "extra": "text"},
    "extra overwriting a field": lambda c: {**c, "extra": {"threshold": "high"}},
    "a 400-digit threshold": lambda c: {**c, "threshold": int("9" * 400)},
    "deep nesting": lambda c: {**c, "notes": json.loads("[" * 60 + "]" * 60)},
    "nesting beyond the parser": None,  # written as text below
    "text parameters": lambda c: {**c, "parameters": "many"},
    "malformed shift_checks": lambda c: {**c, "shift_checks": {"stress": {"conditions": "all of them"}}},
    "text figure in shift_checks": lambda c: {**c, "shift_checks": {"bootstrap_95": {"roc_auc": {"low": "0.9"}}}},
    "bad external_evaluations": lambda c: {**c, "external_evaluations": [{"name": "x", "roc_auc": "great"}]},
    "external_evaluations not a list": lambda c: {**c, "external_evaluations": {"name": "x"}},
    "text count": lambda c: {**c, "validation": {**c.get("validation", {}), "n": "many"}},
}


@pytest.mark.parametrize("damage", list(CARD_DAMAGE))
def test_a_crafted_card_is_refused_with_one_line_never_a_traceback(
    tiny_run: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = json.loads((run / "card.json").read_text())
    if CARD_DAMAGE[damage] is None:
        (run / "card.json").write_text('{"threshold": 0.5, "notes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    else:
        (run / "card.json").write_text(json.dumps(CARD_DAMAGE[damage](card)))
    sample = str(ROOT / "data" / "samples" / "NORMAL" / "IM-0152-0001.jpeg")
    rc, out, err = _main(capsys, "predict", "--model", str(run), "--json", sample)
    assert rc == 2 and out == "" and "card.json" in err, err
    _one_error_line(err)
    assert len(err) < 400  # the message names the problem, it does not echo the card


def test_an_unknown_card_key_is_kept_not_fatal(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = json.loads((run / "card.json").read_text())
    (run / "card.json").write_text(json.dumps({**card, "reviewed_by": {"name": "Dr A", "on": "2026-01-02"}}))
    sample = str(ROOT / "data" / "samples" / "NORMAL" / "IM-0152-0001.jpeg")
    rc, out, err = _main(capsys, "predict", "--model", str(run), "--json", sample)
    assert rc == 0, err
    from pneumo.model.loading import read_card

    assert read_card(run / "model.keras").to_dict()["reviewed_by"] == {"name": "Dr A", "on": "2026-01-02"}


def test_class_folders_follow_the_users_own_links_and_say_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The command line runs as the machine's user on folders that user named: links that user made are
    followed, wherever they lead, and counted in the summary; a link to a file that is not a film is one
    unreadable row, its content never printed. (The app, serving others, refuses links that leave its
    roots: tests/test_data.py.)"""
    data = make_folder(tmp_path / "d", n_per_class=2, size=48)
    private = make_folder(tmp_path / "private", n_per_class=1, size=48)
    secret = next((private / "PNEUMONIA").iterdir())
    (data / "PNEUMONIA" / "person99_virus_1.png").symlink_to(secret)  # a readable film elsewhere
    (data / "NORMAL" / "IM-9999-0001.png").symlink_to("/etc/passwd")
    (data / "NORMAL" / "IM-0000-0009.png").symlink_to(next((data / "NORMAL").iterdir()))  # inside the folder
    rc, out, err = _main(capsys, "summarize", str(data), "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["n_images"] == 7
    assert summary["links"]["followed"] == 3 and summary["links"]["refused"] == 0
    unreadable = {Path(u["path"]).name: u["reason"] for u in summary["unreadable"]}
    assert set(unreadable) == {"IM-9999-0001.png"}
    assert "root:x:0" not in out  # /etc/passwd was opened as an image, its lines never printed
