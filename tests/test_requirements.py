"""requirements.txt is the serving install (Streamlit Community Cloud): ONNX Runtime, no TensorFlow, and the app
runs on it: every page with TensorFlow, Keras and the exporters out of reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10: tomli, pytest's own dependency there
    import tomli as tomllib

# What only training, exporting and archive screening need (see the head of requirements.txt); never in the
# serving install.
TRAINING_ONLY = {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "ray"}
# Modules that must never be imported while serving: the import of any of them fails in the probes below.
BLOCKED_MODULES = ("tensorflow", "keras", "tf2onnx", "onnx", "tf_keras", "tf_keras_vis")


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    """Requirement lines by canonical name; comments and blank lines skipped."""
    found = {}
    for raw in lines:
        text = raw.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def _serving() -> dict[str, Requirement]:
    return _requirements((ROOT / "requirements.txt").read_text().splitlines())


def _project() -> dict[str, Requirement]:
    return _requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def test_serving_requirements_have_no_tensorflow_and_serve_through_onnx_runtime() -> None:
    serving = _serving()
    assert not {name for name in serving if "tensorflow" in name or name.startswith("tf")}, sorted(serving)
    assert not set(serving) & TRAINING_ONLY, sorted(set(serving) & TRAINING_ONLY)
    assert "onnxruntime" in serving and "streamlit" in serving


def test_serving_requirements_are_pyprojects_less_what_only_training_needs() -> None:
    """In step with pyproject.toml: the same packages at the same versions, less the training-only ones."""
    serving, project = _serving(), _project()
    assert set(serving) == set(project) - TRAINING_ONLY, set(serving) ^ (set(project) - TRAINING_ONLY)
    for name, requirement in serving.items():
        assert requirement.specifier == project[name].specifier, name


def _installed_closure(names: list[str]) -> set[str]:
    """Every distribution the given ones need, as installed here (markers evaluated, extras not taken)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this environment does not have
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_no_serving_requirement_pulls_tensorflow_in() -> None:
    """Not through a dependency either: the installed metadata of every requirement, followed to the end."""
    closure = _installed_closure(list(_serving()))
    assert not {name for name in closure if "tensorflow" in name or name in ("keras", "tf2onnx")}, sorted(closure)


# Runs in a child process: TensorFlow and the rest are put out of reach before anything is imported (None in
# sys.modules: `import tensorflow` raises ModuleNotFoundError and importlib.util.find_spec says it is not
# installed, as in the serving install), then every page is run through AppTest and a report is written.
_PROBE = textwrap.dedent(
    """
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None
    from streamlit.testing.v1 import AppTest

    out = {{}}
    for page in ("pages/home.py", "pages/predict.py", "pages/threshold.py", "pages/explore.py", "pages/train.py"):
        at = AppTest.from_file({app!r}, default_timeout=300)
        at.run()
        if page != "pages/home.py":
            at.switch_page(page).run()
        if page == "pages/predict.py" and any(t.key == "use_samples" for t in at.toggle):
            at.toggle(key="use_samples").set_value(True).run()
        out[page] = {{
            "exceptions": [e.value for e in at.exception],
            "errors": [e.value for e in at.error],
            "infos": [e.value for e in at.info],
            "captions": [e.value for e in at.caption],
            "metrics": [m.value for m in at.metric if m.label == "Probability of pneumonia"],
            "start_disabled": [b.disabled for b in at.button if b.label == "Start"],
        }}
    if {report}:
        import numpy as np
        from pneumo.data.collection import read_item
        from pneumo.data.decode import XRay
        from pneumo.integrations.report import study_pdf
        from pneumo.model import reading
        from pneumo.model.loading import load_model

        loaded = load_model({model!r})
        film = read_item({film!r})
        one = reading.Reading("film.jpeg", XRay(film, "film.jpeg", "JPEG", film.shape, {{}}), 0.9, "PNEUMONIA")
        out["report_bytes"] = len(study_pdf([one], loaded, numbers=[2]))
    import resource
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["tensorflow_imported"] = sorted(
        m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None
    )
    print("PROBE" + json.dumps(out))
    """
)


def _probe(tmp_path: Path, models: Path, report: bool = False, python: str = sys.executable) -> dict:
    film = next(iter(sorted((ROOT / "data" / "samples").glob("PNEUMONIA/*.jpeg"))))
    script = _PROBE.format(
        blocked=BLOCKED_MODULES,
        app=str(ROOT / "streamlit_app.py"),
        report=report,
        model=str(models / "model.keras"),
        film=str(film),
    )
    env = {
        **os.environ,
        "PNEUMO_MODELS_DIR": str(models),
        "PNEUMO_RUNS_DIR": str(tmp_path / "runs"),
        "PNEUMO_DATA_ROOTS": "",
        "PNEUMO_ALLOW_CHANGES": "1",
        "PNEUMO_ENGINE": "auto",
    }
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE") :])


def _models_copy(tmp_path: Path, leave_out: tuple[str, ...] = ()) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for path in (ROOT / "models").iterdir():
        if path.name not in leave_out:
            (models / path.name).write_bytes(path.read_bytes())
    return models


def test_every_page_runs_without_tensorflow(tmp_path: Path) -> None:
    """The shipped model through ONNX Runtime on every page, and a PDF report with its Grad-CAM map, with
    TensorFlow, Keras and the exporters impossible to import; the Train page says what training needs instead
    of starting a run that would fail."""
    found = _probe(tmp_path, _models_copy(tmp_path), report=True)
    for page in ("pages/home.py", "pages/predict.py", "pages/threshold.py", "pages/explore.py", "pages/train.py"):
        assert not found[page]["exceptions"], (page, found[page]["exceptions"])
        assert not found[page]["errors"], (page, found[page]["errors"])
    assert len(found["pages/predict.py"]["metrics"]) == 2  # the two default samples were read and scored
    train = found["pages/train.py"]
    assert any("Training needs TensorFlow" in text and "make run" in text for text in train["infos"]), train["infos"]
    assert train["start_disabled"] == [True]
    assert found["report_bytes"] > 10_000
    assert found["tensorflow_imported"] == []


@pytest.mark.parametrize(
    ("leave_out", "expect_error"),
    [
        # No Grad-CAM graph in the export: predictions are served, the model is usable; maps are off.
        (("gradcam.onnx",), False),
        # No export at all: the model needs TensorFlow; a message, never a traceback.
        (("model.onnx", "gradcam.onnx", "onnx_probe.json"), True),
    ],
)
def test_a_model_the_serving_install_cannot_fully_serve_degrades_with_a_message(
    tmp_path: Path, leave_out: tuple[str, ...], expect_error: bool
) -> None:
    found = _probe(tmp_path, _models_copy(tmp_path, leave_out))
    for page in ("pages/home.py", "pages/threshold.py", "pages/explore.py", "pages/train.py"):
        assert not found[page]["exceptions"], (page, found[page]["exceptions"])
    errors = found["pages/home.py"]["errors"]
    if expect_error:
        assert any("cannot be served by this install" in e for e in errors), errors
    else:
        assert errors == []
    assert found["tensorflow_imported"] == []


@pytest.mark.bench  # installs requirements.txt from the package index into a new environment: minutes
def test_every_page_runs_in_a_fresh_serving_install(tmp_path: Path) -> None:
    """requirements.txt alone, installed into a fresh virtual environment (PNEUMO_SERVING_VENV names one made
    earlier, to measure again without reinstalling): every page through AppTest and a PDF report, TensorFlow
    absent for real rather than blocked, and the demo's peak resident memory recorded in artifacts/."""
    venv = Path(os.environ.get("PNEUMO_SERVING_VENV") or tmp_path / "serving")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", "requirements.txt"],
            check=True,
            cwd=ROOT,
            timeout=3600,
        )
    missing = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'tensorflow'" in missing.stderr
    found = _probe(tmp_path, _models_copy(tmp_path), report=True, python=str(python))
    for page in ("pages/home.py", "pages/predict.py", "pages/threshold.py", "pages/explore.py", "pages/train.py"):
        assert not found[page]["exceptions"] and not found[page]["errors"], (page, found[page])
    assert len(found["pages/predict.py"]["metrics"]) == 2 and found["report_bytes"] > 10_000
    versions = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "serving_install.json").write_text(
        json.dumps(
            {
                "what": "requirements.txt alone in a fresh virtual environment: AppTest on every page with the "
                "two sample films read, then a PDF report; peak resident memory of that process",
                "peak_rss_mb": found["peak_rss_mb"],
                "packages": len(json.loads(versions)),
                "tensorflow_installed": False,
            },
            indent=2,
        )
    )
    # Streamlit Community Cloud gives an app about 0.7-2.7 GB: the demo must fit the smallest box.
    assert found["peak_rss_mb"] < 700, found["peak_rss_mb"]
