"""The deployment files agree with pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_shipped_model_files_present_and_small() -> None:
    for name in (
        "model.keras",
        "model.onnx",
        "gradcam.onnx",
        "onnx_probe.json",
        "card.json",
        "oof_predictions.csv",
        "history.json",
        "ood.npz",
        "drift_reference.npz",
        "image_hashes.json",
        "EXPERIMENTS.md",
    ):
        assert (ROOT / "models" / name).exists(), name
    # The budget is for everything shipped with the model, not the Keras file alone.
    assert sum(f.stat().st_size for f in (ROOT / "models").iterdir()) <= 30 * 2**20


def test_samples_carry_attribution() -> None:
    text = (ROOT / "data" / "samples" / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in text and "10.1016/j.cell.2018.02.010" in text
    assert len(list((ROOT / "data" / "samples").glob("*/*.jpeg"))) == 48


def _import_cycles(package: str) -> set[str]:
    """Every chain by which a module of package reaches itself through the imports of others, module-level or
    deferred (grimp reads every import statement, inside functions too)."""
    import grimp

    graph = grimp.build_graph(package, cache_dir=None)
    cycles = set()
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" → ".join((module, *back)))
    return cycles


def test_no_import_cycle_between_modules() -> None:
    """No module of pneumo reaches itself through the imports of others. The layers contract (lint-imports) orders
    the subpackages; this keeps the modules within one layer from leaning on each other both ways."""
    cycles = _import_cycles("pneumo")
    assert not cycles, " ; ".join(sorted(cycles))


def test_the_cycle_check_sees_imports_through_the_package_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package made here whose cycles pass only through `from package import name` (a module, deferred inside a
    function; a name the package's __init__ takes from a module) and `import package.module`: a check reading
    only `from package.module import …` would find none of them."""
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from cyclic.c import VALUE\n")
    (pkg / "a.py").write_text("from cyclic import b\n")
    (pkg / "b.py").write_text("def later() -> None:\n    from cyclic import a\n")
    (pkg / "c.py").write_text("VALUE = 1\n\n\ndef again() -> None:\n    from cyclic import VALUE\n")
    (pkg / "d.py").write_text("import cyclic.e\n")
    (pkg / "e.py").write_text("import cyclic.d\n")
    (pkg / "alone.py").write_text("from cyclic.c import VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles = _import_cycles("cyclic")
    assert {" ".join(sorted(set(chain.split(" → ")))) for chain in cycles} == {
        "cyclic.a cyclic.b",
        "cyclic cyclic.c",
        "cyclic.d cyclic.e",
    }


def test_layers_contract_holds() -> None:
    """The import-linter contract in pyproject.toml: cli → app → integrations → training → evaluation → model →
    data → core, each importing only those below it."""
    import subprocess
    import sys
    from pathlib import Path

    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_dashboard_never_imports_tensorflow() -> None:
    """The app serves through ONNX Runtime: TensorFlow would cost its process ~600 MB resident for good. The
    pages' own imports and a whole AppTest run of every page (the shipped model served) must not load it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(ROOT / 'streamlit_app.py')!r}, default_timeout=240)\n"
        "at.run()\n"
        "for page in ('home', 'predict', 'threshold', 'explore', 'train'):\n"
        "    at.switch_page(f'pages/{page}.py').run()\n"
        "    assert not at.exception, (page, [e.value for e in at.exception])\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]


def test_serving_and_its_maps_need_no_tf_keras_vis() -> None:
    """tf-keras-vis is a development dependency (the reference Grad-CAM of the tests and the bench): with it
    unimportable, the shipped model still predicts and draws both maps, and only the reference engine is
    refused, saying where it comes from."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['tf_keras_vis'] = None  # every import of it now raises ImportError\n"
        "import numpy as np\n"
        "from pneumo.model import explain\n"
        "from pneumo.model.loading import load_model\n"
        "loaded = load_model()\n"
        "film = np.outer(np.linspace(0.1, 0.9, 256), np.linspace(0.9, 0.2, 256)).astype(np.float32)\n"
        "loaded.predict(film)\n"
        "maps = explain.gradcams(loaded, film)\n"
        "assert sorted(maps) == ['gradcam', 'gradcam++'] and all(m.shape == film.shape for m in maps.values())\n"
        "try:\n"
        "    explain.gradcam(loaded, film, engine='tf-keras-vis')\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.strip().splitlines()[-1]
        == "refused: engine 'tf-keras-vis' needs the dev extra: pip install -e '.[dev]'"
    )
