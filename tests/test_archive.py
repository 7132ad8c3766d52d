"""`python -m pneumo screen` on Ray Data (pneumo.integrations.archive): the rows predict gives, error rows, resuming
(files fixed or changed since are screened again, and readers see one row per file), the readings database with
--log, and the same rows from a two-node cluster on this machine.

One local Ray serves the module (its start-up is the slow part); the cluster test stops it and starts its own two
nodes on loopback addresses, stopped by their process groups at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumo.cli import main
from pneumo.core.files import file_lock
from pneumo.integrations import archive, archive_job, archive_store
from tests.conftest import ROOT, free_ports, make_folder, synthetic_xray, write_png


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 small synthetic films, one film again under another name, and two files no decoder takes."""
    root = make_folder(tmp_path_factory.mktemp("archive") / "films", n_per_class=6, size=64)
    shutil.copyfile(root / "NORMAL" / "IM-0000-0000.png", root / "NORMAL" / "zz-copy.png")
    (root / "PNEUMONIA" / "notes.png").write_bytes(b"not an image at all, only text\n")
    (root / "PNEUMONIA" / "empty.jpg").write_bytes(b"")
    return root


N_FILES = 15


def _ensure_local_ray() -> None:
    """A local Ray as `screen` starts one (loopback, no dashboard), unless one runs already."""
    import ray

    archive_job.quiet_ray()
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address=archive.LOCAL_NODE_IP,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


@pytest.fixture(scope="module")
def _ray_module() -> Iterator[None]:
    """The module's local Ray, started by the library as `screen` starts it, stopped after the last test (also when
    _ensure_local_ray started it again after the cluster test)."""
    with archive.ray_session(num_cpus=2):
        yield
    import ray

    ray.shutdown()


@pytest.fixture
def local_ray(_ray_module: None) -> None:
    """One local Ray for the module, started again if the cluster test stopped it."""
    _ensure_local_ray()


@pytest.fixture(scope="module")
def first_run(films: Path, tmp_path_factory: pytest.TempPathFactory, _ray_module: None) -> tuple[Path, Any]:
    """One screening of the films, in batches of 4, on the module's local Ray."""
    _ensure_local_ray()
    out = tmp_path_factory.mktemp("screened") / "out"
    return out, archive.screen([films], out, batch_size=4)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    """Every row ever written to `out`, by path; a file with two rows fails."""
    rows = archive.read_results(out, history=True).to_pylist()
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "a file has two rows"
    return by_path


def _predict(films: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    main(["predict", "--json", str(films)])
    return json.loads(capsys.readouterr().out)


def test_rows_match_predict(
    local_ray: None, films: Path, first_run: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = first_run
    assert (summary.screened, summary.skipped, summary.errors) == (N_FILES, 0, 2)
    assert summary.parts == 4  # 15 files in batches of 4
    assert summary.films_per_s > 0 and summary.actors == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in archive.part_files(out)), "no leftovers"
    rows = _rows(out)
    expected = _predict(films, capsys)
    assert sorted(rows) == sorted(e["path"] for e in expected)
    for e in expected:
        row = rows[e["path"]]
        if e["probability"] is None:
            assert row["probability"] is None
        else:
            assert row["probability"] == pytest.approx(e["probability"], abs=1e-5)
        for key in ("prediction", "threshold", "operating_point", "warnings", "error", "repeat_of"):
            assert row[key] == e[key], (key, e["path"])
        assert row["model"] == "ensemble" and row["card_hash"] == summary.card_hash
    # The copy is the same film: named as a repeat of the first file, in predict's words.
    copy = rows[str(films / "NORMAL" / "zz-copy.png")]
    assert copy["repeat_of"] == str(films / "NORMAL" / "IM-0000-0000.png")
    assert copy["pixel_hash"] == rows[copy["repeat_of"]]["pixel_hash"]
    assert copy["sha256"] == rows[copy["repeat_of"]]["sha256"]
    # The two bad files are rows with their one-line reason; the others carry no error.
    bad = {p: r for p, r in rows.items() if r["error"]}
    assert sorted(Path(p).name for p in bad) == ["empty.jpg", "notes.png"]
    for path, row in bad.items():
        assert row["error"].startswith(f"{path}: ") and "\n" not in row["error"]
        assert row["probability"] is None and row["prediction"] is None
    assert "empty file" in bad[str(films / "PNEUMONIA" / "empty.jpg")]["error"]
    assert "not an image" in bad[str(films / "PNEUMONIA" / "notes.png")]["error"]
    assert rows[str(films / "PNEUMONIA" / "empty.jpg")]["sha256"] == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # SHA-256 of no bytes
    )


def test_rerun_skips_what_was_read_and_tries_the_unreadable_again(
    local_ray: None, films: Path, first_run: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    before = set(archive.part_files(out))
    capsys.readouterr()
    # The two unreadable files are read again (still unreadable: exit status 2); the 13 films are not.
    assert main(["screen", str(films), "--out", str(out), "--batch-size", "4", "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert (summary["screened"], summary["skipped"], summary["errors"], summary["parts"]) == (2, N_FILES - 2, 2, 1)
    assert (summary["retried"], summary["changed"], summary["files"]) == (2, 0, N_FILES)
    assert summary["out"] == str(out)
    assert set(archive.part_files(out)) > before and len(archive.part_files(out)) == len(before) + 1
    # Readers see one row per file; the history keeps both error rows of each unreadable file.
    assert archive.read_results(out).num_rows == N_FILES
    assert archive.read_results(out, history=True).num_rows == N_FILES + 2
    # Without the unreadable files, a rerun has nothing to do, and the text form says how many it skipped.
    good = tmp_path / "good"
    shutil.copytree(films, good, ignore=shutil.ignore_patterns("notes.png", "empty.jpg"))
    assert main(["screen", str(good), "--out", str(tmp_path / "o2")]) == 0
    capsys.readouterr()
    assert main(["screen", str(good), "--out", str(tmp_path / "o2")]) == 0
    assert f"all {N_FILES - 2} files were already screened" in capsys.readouterr().out


def test_interrupted_run_resumes_without_duplicates(
    local_ray: None, films: Path, first_run: tuple[Path, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    # An interruption: the last part never got its name, and its temporary file is still there.
    lost = archive.part_files(out)[-1]
    lost.rename(out / f".{lost.name}.abc123.part")
    kept = archive.read_results(out, ["error"]).column("error").to_pylist()
    unreadable = sum(error is not None for error in kept)
    assert unreadable == 2  # both unreadable files sit in the parts kept, so the rerun reads them again
    extra = write_png(films.parent / "more" / "new.png", synthetic_xray(np.random.default_rng(7), 64))
    summary = archive.screen([films, extra], out, batch_size=4)
    assert (summary.skipped, summary.retried) == (len(kept) - unreadable, unreadable)
    assert summary.screened == N_FILES - len(kept) + 1 + unreadable
    current = archive.read_results(out)
    assert current.num_rows == summary.files == N_FILES + 1 and str(extra) in current.column("path").to_pylist()
    assert not list(out.glob(".*.part")), "the dead run's temporary file is cleared"
    # Another card (a changed threshold, a recorded evaluation) or operating point screens everything again; the
    # same screens only the two unreadable files again.
    paths = archive.collect_paths([films, extra])
    assert len(archive_store.plan(out, paths, "another-card", summary.operating_point).todo) == N_FILES + 1
    assert len(archive_store.plan(out, paths, summary.card_hash, "site-b").todo) == N_FILES + 1
    again = archive_store.plan(out, paths, summary.card_hash, summary.operating_point)
    assert (len(again.todo), again.retried, again.changed, len(again.done)) == (2, 2, 0, N_FILES - 1)


def test_a_fixed_file_and_a_replaced_film_are_screened_again(local_ray: None, tmp_path: Path) -> None:
    """A rerun reads again a file that was unreadable (since fixed) and a film replaced at the same path, and the
    current rows are the new ones: one per file, with the new content's SHA-256."""
    folder = tmp_path / "films"
    rng = np.random.default_rng(11)
    first = write_png(folder / "a.png", synthetic_xray(rng, 64))
    write_png(folder / "b.png", synthetic_xray(rng, 64, pneumonia=True))
    broken = folder / "c.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    out = tmp_path / "out"
    one = archive.screen([folder], out, batch_size=2)
    assert (one.screened, one.errors) == (3, 1)
    rows = {r["path"]: r for r in archive.read_results(out).to_pylist()}
    assert rows[str(broken)]["error"] and rows[str(first)]["size"] == first.stat().st_size
    assert rows[str(first)]["mtime_ns"] == first.stat().st_mtime_ns
    old_pixels = rows[str(first)]["pixel_hash"]

    write_png(broken, synthetic_xray(rng, 64))  # fixed
    write_png(first, synthetic_xray(rng, 64, pneumonia=True))  # another film under the same name
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # a coarse clock
    two = archive.screen([folder], out, batch_size=2)
    assert (two.screened, two.skipped, two.retried, two.changed, two.errors) == (2, 1, 1, 1, 0)
    current = {r["path"]: r for r in archive.read_results(out).to_pylist()}
    assert len(current) == 3 == two.files
    assert current[str(broken)]["error"] is None and current[str(broken)]["probability"] is not None
    assert current[str(first)]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert current[str(first)]["pixel_hash"] != old_pixels
    history = archive.read_results(out, ["path"], history=True).column("path").to_pylist()
    assert sorted(history) == sorted([str(first), str(first), str(broken), str(broken), str(folder / "b.png")])
    # A third run finds nothing to do.
    three = archive.screen([folder], out, batch_size=2)
    assert (three.screened, three.skipped) == (0, 3)


def test_readers_take_the_newest_row_and_older_parts_read_as_changed(tmp_path: Path) -> None:
    """Parts written by hand: the newest row of a path is its current one, in write order; a part from before the
    size and mtime_ns columns reads them as null, so a rerun screens its files again rather than trusting them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    film = write_png(tmp_path / "films" / "a.png", synthetic_xray(np.random.default_rng(3), 64))
    out = tmp_path / "out"
    out.mkdir()
    old = {c: [None] for c in archive.COLUMNS if c not in ("size", "mtime_ns")}
    old.update(path=[str(film)], card_hash=["card"], operating_point=["shipped"], warnings=[[]], probability=[0.1])
    pq.write_table(pa.table(old), out / "part-20240101T000000-aaaaaaaa-000000.parquet")
    plan = archive_store.plan(out, [str(film)], "card", "shipped")
    assert (plan.changed, plan.retried, [p for _, p in plan.todo]) == (1, 0, [str(film)])

    size, mtime = film.stat().st_size, film.stat().st_mtime_ns
    writer = archive_store.PartWriter(out)
    row = {**{c: v[0] for c, v in old.items()}, "size": size, "mtime_ns": mtime, "probability": 0.7}
    other = {**row, "path": str(tmp_path / "films" / "b.png"), "probability": 0.2}
    writer.write(pa.Table.from_pylist([row, other], schema=archive_store.schema()))
    assert archive.part_files(out)[-1].name.startswith(f"part-{writer.run_id}")  # after the older part by name
    current = archive.read_results(out).to_pylist()
    assert [(r["path"], r["probability"]) for r in current] == [(str(film), 0.7), (other["path"], 0.2)]
    assert archive.read_results(out, history=True).num_rows == 3
    plan = archive_store.plan(out, [str(film)], "card", "shipped")
    assert (plan.todo, plan.done) == ([], {str(film): None})
    os.utime(film, ns=(mtime, mtime + 10**9))
    assert archive_store.plan(out, [str(film)], "card", "shipped").changed == 1


def test_log_stores_one_reading_per_screened_film(
    local_ray: None,
    films: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--log: each screened film is one reading in the readings database, with its file as the source and the row's
    probability, decision and error; a rerun logs only the files it reads again."""
    database = tmp_path / "records.db"
    monkeypatch.setenv("PNEUMO_DATABASE_URL", f"sqlite:///{database}")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["screen", str(films), "--out", str(out), "--batch-size", "4", "--log", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["logged"] == N_FILES
    assert f"logged {N_FILES} reading(s) to sqlite:///" in captured.err
    with sqlite3.connect(database) as db:
        logged = db.execute(
            "SELECT source_kind, source_name, probability, decision, error, card_hash FROM readings ORDER BY id"
        ).fetchall()
    rows = {Path(r["path"]).resolve(): r for r in archive.read_results(out).to_pylist()}
    assert len(logged) == N_FILES and {r[0] for r in logged} == {"file"}
    assert sorted(Path(r[1]) for r in logged) == sorted(rows)
    for _, name, probability, decision, error, card in logged:
        row = rows[Path(name)]
        assert (probability, decision, card) == (row["probability"], row["prediction"], row["card_hash"])
        assert (error is None) == (row["error"] is None)
        if error:  # the reason alone, as predict --log stores it; the row names the file as well
            assert row["error"] == f"{row['path']}: {error}"
    # A rerun reads the two unreadable files again, and logs those two.
    assert main(["screen", str(films), "--out", str(out), "--batch-size", "4", "--log"]) == 2
    assert "logged 2 reading(s)" in capsys.readouterr().err
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == N_FILES + 2


def test_drift_over_the_run_is_the_drift_check_of_its_films(local_ray: None, tmp_path: Path) -> None:
    """--drift: the run's films tested as one batch give what `pneumo drift` gives for the same files."""
    from pneumo.evaluation import drift
    from pneumo.model.loading import load_model

    samples = ROOT / "data" / "samples"
    summary = archive.screen([samples], tmp_path / "out", batch_size=16, drift=True)
    assert summary.drift is not None and summary.drift["available"], summary.drift
    expected, _ = drift.check_paths(load_model(), archive.collect_paths([samples]))
    assert summary.drift["n"] == expected.n == summary.screened
    assert summary.drift["shifted"] == expected.shifted
    assert summary.drift["p_value"] == pytest.approx(expected.p_value, rel=1e-6, abs=1e-9)
    three = sorted((samples / "NORMAL").iterdir())[:3]
    too_few = archive.screen(three, tmp_path / "few", drift=True)
    assert too_few.drift is not None and not too_few.drift["available"]
    assert "at least 20 films, got 3" in too_few.drift["reason"]


def test_predict_and_the_command_line_never_import_ray(films: Path) -> None:
    """Ray is the screen command's alone: predict, and the parser every command builds, start without it."""
    script = (
        "import sys\n"
        "from pneumo.cli import main\n"
        f"main(['predict', '--json', {str(films / 'NORMAL')!r}])\n"
        "print(sorted(m for m in ('ray', 'pneumo.integrations.archive') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_manifest_and_sources(films: Path, tmp_path: Path) -> None:
    one = films / "NORMAL" / "IM-0000-0000.png"
    manifest = tmp_path / "list.csv"
    rel = os.path.relpath(films / "PNEUMONIA" / "empty.jpg", tmp_path)
    manifest.write_text(f"label,Path\n1,{one}\n0,{rel}\n1,{one}\n0,\n1,missing.png\n")
    assert archive.read_manifest(manifest) == [str(one), str(tmp_path / rel), str(one), str(tmp_path / "missing.png")]
    paths = archive.collect_paths([manifest, films / "NORMAL"])
    assert paths[:3] == [str(one), os.path.abspath(tmp_path / rel), str(tmp_path / "missing.png")]
    assert len(paths) == len(set(paths)) == 3 + 6  # the folder's own files, the first once
    no_path = tmp_path / "labels.csv"
    no_path.write_text("file,label\na.png,1\n")
    with pytest.raises(ValueError, match="'path' column"):
        archive.read_manifest(no_path)


def test_refusals_are_one_line(films: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("a user's file")
    (tmp_path / "empty").mkdir()
    for argv, words in (
        (["screen", str(films), "--out", str(a_file)], "is not a folder"),
        (["screen", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no image files"),
        (["screen", str(films), "--out", str(tmp_path / "o"), "--operating-point", "nowhere"], "no operating point"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert a_file.read_text() == "a user's file"
    # A cluster address nothing answers at is one line at once (Ray itself would retry for minutes).
    with pytest.raises(ConnectionError, match="no Ray cluster answers there"):
        archive_job.check_reachable(f"127.0.0.1:{free_ports(1)[0]}")
    with pytest.raises(ValueError, match="RAY_ADDRESS nonsense: expected HOST:PORT"):
        archive_job.check_reachable("nonsense", "RAY_ADDRESS")
    with pytest.raises(SystemExit):
        main(["screen", str(films), "--out", str(tmp_path / "o"), "--batch-size", "0"])
    # A folder another run is writing is refused before any work.
    busy = tmp_path / "busy"
    busy.mkdir()
    with file_lock(busy / archive.LOCK_NAME, timeout=1.0):
        capsys.readouterr()
        assert main(["screen", str(films), "--out", str(busy)]) == 2
        assert "another screening run" in capsys.readouterr().err
    assert not archive.part_files(busy)


# ---------------------------------------------------------------------------------------------- two nodes


def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


@pytest.fixture
def two_nodes(local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A head and a worker node on this machine, one CPU each, on loopback addresses Ray keeps as given (it rewrites
    127.0.0.1 to the machine's network address); each `ray start --block` leads a process group of its own, and
    the group is what is stopped at the end, whatever happened."""
    import ray

    ray.shutdown()  # the module's local Ray: this test's driver joins the cluster instead
    port = free_ports(1)[0]
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # The local Ray made this user's token (Ray's default for new clusters); the nodes and the driver use it.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    commands = [
        [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.2", "--port", str(port)]
        + ["--include-dashboard=false"],
        [ray_bin, "start", "--address", f"127.0.0.2:{port}", "--node-ip-address", "127.0.0.3"],
    ]
    logs = [tmp_path / "head.log", tmp_path / "worker.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for command, log in zip(commands, logs):
            with open(log, "wb") as fh:
                procs.append(
                    subprocess.Popen(
                        command + common, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            _wait(lambda log=log: b"Ray runtime started" in log.read_bytes(), 90, f"ray start: {log.read_text()}")
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        yield f"127.0.0.2:{port}"
    finally:
        ray.shutdown()
        # Every process the nodes started: their groups, and the workers, which Ray puts in sessions of their own.
        started = {pid for proc in procs for pid in _descendants(proc.pid)}
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _descendants(root: int) -> set[int]:
    """root's child processes and theirs, from /proc (Linux, where these tests run)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def test_two_node_cluster_gives_the_same_rows(
    two_nodes: str, films: Path, first_run: tuple[Path, Any], tmp_path: Path
) -> None:
    import ray
    import ray.data

    out = tmp_path / "out"
    context = ray.data.DataContext.get_current()
    saved = context.wait_for_min_actors_s
    # Both actors up before the first block is handed out: the first would otherwise read every film of so small
    # a run while the second loads its model.
    context.wait_for_min_actors_s = 120
    try:
        summary = archive.screen([films], out, address=two_nodes, batch_size=2)
    finally:
        context.wait_for_min_actors_s = saved
    assert not ray.is_initialized(), "the run leaves the cluster it joined"
    assert (summary.screened, summary.errors, summary.actors) == (N_FILES, 2, 2)
    # Both nodes read films: each has one CPU, so each holds one actor.
    assert len(summary.nodes) == 2 and sum(summary.nodes.values()) == N_FILES
    assert all(count > 0 for count in summary.nodes.values())
    local, clustered = _rows(first_run[0]), _rows(out)
    assert sorted(local) == sorted(clustered)
    for path, row in clustered.items():
        want = local[path]
        for key in ("sha256", "prediction", "threshold", "warnings", "error", "repeat_of", "pixel_hash", "card_hash"):
            assert row[key] == want[key], (key, path)
        if want["probability"] is None:
            assert row["probability"] is None
        else:
            assert row["probability"] == pytest.approx(want["probability"], abs=1e-6)


def test_readme_figures_quote_the_screening_bench() -> None:
    """The README's screening figures and its million-film estimate are written from bench/screen-results.json
    (python -m pneumo docs; tests/test_docs.py keeps the README equal to it): results made here land in the text."""
    from pneumo.integrations import docs

    def spread(median: float) -> dict[str, float]:
        return {"median": median, "p10": median - 1, "p90": median + 1}

    ms = {
        name: spread(value)
        for name, value in {
            "read_ms": 0.05,
            "decode_ms": 2.5,
            "network_ms": 3.25,
            "input_check_ms": 0.5,
            "driver_ms": 0.25,
            "film_work_ms": 3.0,
            "film_work_full_size_dicom_ms": 61.0,
        }.items()
    }
    results = {
        "command": "python bench/screen.py --films 0 --rounds 3 --batch-size 32",
        "when": "2026-01-02T03:04:05+00:00",
        "films": 5216,
        "film_source": "shared training folder",
        "film_side_px": 224,
        "machine": {"cores": 2},
        "rounds": 3,
        "load_average_1min_before_each_round": [1.5, 3.25],
        "films_per_s": {"screen_2_actors": spread(120.0), "screen_1_actor": spread(70.0), "evaluate": spread(90.0)},
        "steady_films_per_s": {"screen_2_actors": spread(140.0), "screen_1_actor": spread(75.0)},
        "screen_over_evaluate": spread(1.33),
        "two_actors_over_one": spread(1.87),
        "ray_start_s": spread(4.0),
        "ms_per_film": ms,
        "full_size_films": {"px": [2048, 2500], "bytes": {"dicom": 10_240_000, "jpeg": 260_000}},
        "estimate": {
            "films": 1_000_000,
            "actor_ms_per_full_size_film": 71.0,
            "assumed_node_cores": 16,
            "parallel_efficiency": 0.935,
            "node_films_per_s": 210.7,
            "node_read_mb_s": 2157.6,
            "hours_on_nodes": {"1": 1.32, "4": 0.33, "16": 0.08},
            "nodes_until_storage_limit": {"1 Gb/s link": 0.05, "10 Gb/s link": 12.4},
            "hours_to_read_at_bandwidth": {"1 Gb/s link": 25.86, "10 Gb/s link": 2.59},
            "film_mb": 10.24,
            "assumed_bandwidth_mb_s": {"1 Gb/s link": 110.0, "10 Gb/s link": 1100.0},
            "driver_films_per_s_limit": 4000,
            "jpeg": {"film_mb": 0.26, "node_read_mb_s": 38.9, "nodes_until_storage_limit": {"1 Gb/s link": 2.83}},
            "nodes_until_driver_limit": 19.0,
        },
    }
    text = docs.screen_figures(results)
    assert text.startswith("Measured by `python bench/screen.py --films 0 --rounds 3 --batch-size 32` (2026-01-02")
    assert "5,216 films of the shared training folder (224 px JPEGs) on 2 cores, 3 interleaved rounds" in text
    assert "load average 1.5–3.2" in text
    assert "| `screen`, 2 actors | 120.0 [119.0–121.0] | 140.0 [139.0–141.0] |" in text
    assert "| `evaluate` (probabilities, metrics, drift check) | 90.0 [89.0–91.0] | — |" in text
    assert "two actors over one: 1.87 [0.87–2.87]" in text and "decoding 2.5" in text
    assert "an uncompressed DICOM of 10.2 MB) costs 61 ms" in text
    assert "reads 211 films/s and asks the archive for 2158 MB/s" in text
    assert "1.3 h on 1 node, 20 min on 4 nodes, 5 min on 16 nodes" in text
    assert "which must deliver 10.2 TB: a 1 Gb/s link (110 MB/s) feeds 0.05 of one node and takes 25.9 h" in text
    assert "a 10 Gb/s link (1,100 MB/s) feeds 12 nodes and takes 2.6 h however many nodes read." in text
    assert "feeds 0.05 of one node and takes 25.9 h" in text
    assert "JPEG exports (0.26 MB a film here) asks 39 MB/s a node: a 1 Gb/s link then feeds 2.8 nodes." in text
    assert "keeps up with 4,000 films/s (19 nodes)" in text
