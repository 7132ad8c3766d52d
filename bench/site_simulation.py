"""A site simulated from films of another period: the readings database, the monitor and calibrate-from-verdicts,
each step through the real command line (`python -m pneumo ...` in a subprocess) on a fresh SQLite database.

    .venv/bin/python bench/site_simulation.py [--out bench/site_simulation.json] [--work DIR] [--shots DIR]

A PROXY, not a later period. The later-period films are not here. What stands in for them:

- 624 films of the shared training folder (234 normal, 390 pneumonia: the official test split's class mix), drawn
  with a fixed seed from fold 0 of the shipped ensemble's five folds (split by patient and duplicate group). The
  card records fold 0 as its held-out fold, but it is held out from one of the five networks only: the other four
  trained on these films, so the served ensemble (their mean) has seen every one of them. And the card's operating
  point was set on the out-of-fold scores of all 5,216 training films, these among them. No training film was left
  out of both; none is "unseen" here. Figures on them flatter the model (most of all at 1x).
- each film reframed the way films of the later period look: zoomed in 1.3x about its centre, the edge mirrored
  (pneumo.evaluation.framing.Framing, the card's framing sweep), written as an 8-bit PNG. The script also reads the
  624 films as they are (1x, without logging them) to measure what the zoom does to the share of normals flagged at
  the card's threshold.

Steps, each a `python -m pneumo` subprocess with PNEUMO_DATABASE_URL on a database of the script's own:
1. `predict --log` over the 624 reframed films (timed);
2. `verdicts import` of 150 of them, drawn at random, labels from their folder names;
3. `monitor --json`: readings and verdicts counted, sensitivity and specificity with bounds, alerts (reported as
   they come: the data are not tuned to force one);
4. `calibrate --from-verdicts` (the card's target recall) sets a site point; its sensitivity and specificity are
   measured on the other 474 films from predict's own probabilities; steps 2-4 are repeated on three draws of the
   150, each on a copy of step 1's database (a file copy: the readings are not written again), median reported;
5. `audit-log --verify` on draw 1's database (intact: exit 0), then on a copy with one event edited by the `sqlite3`
   command line tool (the append-only trigger dropped first, as the file's owner can): exit 2.

Then a simulated week for the Monitor page's screenshots (--shots): the same 624 readings, their probabilities and
hashes as step 1 logged them, written to another database through the library (add_readings with each reading's
time set over seven days: the command line stamps every reading with the time it is made, and the library offers
times), with draw 1's 150 verdicts imported through the library. The page is shot at 1400 px and 390 px wide, light
and dark, with Debian's Chromium through Playwright against `streamlit run streamlit_app.py`.

Every figure lands in the JSON (--out), with the commands that made it (WORK stands for the work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
SEED = 20250303
FOLD = 0
N_NORMAL, N_PNEUMONIA = 234, 390  # 624, the official test split's class mix
N_VERDICTS = 150
DRAWS = 3
ZOOM = 1.3
READER = "simulated reader"
WEEK_START = datetime(2025, 3, 3, 7, 0, tzinfo=timezone.utc)  # a Monday


def choose_films() -> list[tuple[Path, int]]:
    """(path, label) of the 624 films: fold 0 of the card's out-of-fold file, drawn by class with SEED."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(ROOT / "models" / "oof_predictions.csv")
    frame = frame[frame["fold"] == FOLD]
    rng = np.random.default_rng(SEED)
    chosen = []
    for label, count in ((0, N_NORMAL), (1, N_PNEUMONIA)):
        rows = frame[frame["label"] == label].sort_values("path")
        picked = rows.iloc[np.sort(rng.choice(len(rows), count, replace=False))]
        folder = TRAIN / ("PNEUMONIA" if label else "NORMAL")
        chosen += [(folder / Path(p).name, label) for p in picked["path"]]
    missing = [str(p) for p, _ in chosen if not p.is_file()]
    if missing:
        raise SystemExit(f"error: {missing[0]}: a film of the card's fold file is missing ({len(missing)} in all)")
    return chosen


def reframe(films: list[tuple[Path, int]], dest: Path) -> float:
    """Each film zoomed in ZOOM x about its centre, as an 8-bit PNG in dest/NORMAL or dest/PNEUMONIA; seconds."""
    from PIL import Image

    from pneumo.data.decode import load_xray
    from pneumo.data.pixels import to_uint8
    from pneumo.evaluation.framing import Framing

    zoom = Framing(f"zoom {ZOOM:g}x", zoom=ZOOM)
    started = time.perf_counter()
    for path, label in films:
        folder = dest / ("PNEUMONIA" if label else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = zoom.apply(load_xray(path).pixels)
        Image.fromarray(to_uint8(pixels)).save(folder / f"{path.stem}.png")
    return time.perf_counter() - started


class Cli:
    """`python -m pneumo` in a subprocess, with the work folder's database, runs folder and user; every call kept."""

    def __init__(self, work: Path):
        self.work = work
        self.calls: list[dict[str, Any]] = []

    def env(self, database: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMO_")}
        env.update(
            PNEUMO_DATABASE_URL=f"sqlite:///{database}",
            PNEUMO_RUNS_DIR=str(self.work / "runs"),
            PNEUMO_USER="site simulation",
            TF_CPP_MIN_LOG_LEVEL="3",
            CUDA_VISIBLE_DEVICES="",
        )
        return env

    def __call__(self, database: Path, *args: str, expect: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        started = time.perf_counter()
        ran = subprocess.run(
            [sys.executable, "-m", "pneumo", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env(database),
            timeout=3600,
        )
        seconds = time.perf_counter() - started
        shown = shlex.join(a.replace(str(self.work), "WORK") for a in args)
        self.calls.append(
            {"command": f"python -m pneumo {shown}", "database": database.name, "exit": ran.returncode, "s": seconds}
        )
        if ran.returncode not in expect:
            raise SystemExit(f"error: python -m pneumo {shown}: exit {ran.returncode}\n{ran.stderr[-3000:]}")
        return ran


def rates(labels: list[int], probabilities: list[float], threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity and the share of normals flagged at a threshold, with the counts."""
    tp = sum(1 for y, p in zip(labels, probabilities) if y == 1 and p >= threshold)
    fn = sum(1 for y, p in zip(labels, probabilities) if y == 1 and p < threshold)
    tn = sum(1 for y, p in zip(labels, probabilities) if y == 0 and p < threshold)
    fp = sum(1 for y, p in zip(labels, probabilities) if y == 0 and p >= threshold)
    return {
        "n": tp + fn + tn + fp,
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "normals_flagged": fp / (tn + fp) if tn + fp else None,
    }


def copy_database(source: Path, dest: Path) -> None:
    """The database file and its audit head file, under a new name (a file copy: nothing inside is changed)."""
    shutil.copy(source, dest)
    head = source.with_name(source.name + ".audit-head.json")
    if head.exists():
        shutil.copy(head, dest.with_name(dest.name + ".audit-head.json"))


def simulate(work: Path) -> dict[str, Any]:
    from pneumo.model.loading import read_card
    from pneumo.model.reading import NOT_ASSESSABLE

    models = work / "models"
    shutil.copytree(ROOT / "models", models)  # calibrate records site points in the card: never in the shipped one
    model = models / "model.keras"
    card = read_card(model)
    card_threshold = float(card.threshold)
    target_recall = float(((card.validation or {}).get("operating_point") or {}).get("target_recall") or 0.95)
    cli = Cli(work)

    films = choose_films()
    films_dir = work / "films"
    reframe_s = reframe(films, films_dir)

    # 1x, for the record of what the zoom does (not logged).
    originals = work / "originals"
    for path, label in films:
        folder = originals / ("PNEUMONIA" if label else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / path.name)
    ran = cli(work / "unused.db", "predict", "--model", str(model), "--json", str(originals), expect=(0, 2))
    as_sent = json.loads(ran.stdout)

    # Step 1: predict --log over the 624 reframed films.
    base = work / "site.db"
    ran = cli(base, "predict", "--model", str(model), "--json", "--log", str(films_dir), expect=(0, 2))
    predict_s = cli.calls[-1]["s"]
    read = json.loads(ran.stdout)
    logged_line = next((line for line in ran.stderr.splitlines() if line.startswith("logged ")), None)
    label_of = {str(Path(r["path"]).resolve()): int(Path(r["path"]).parent.name == "PNEUMONIA") for r in read}
    assessable = [
        r for r in read if r["error"] is None and r["probability"] is not None and r["prediction"] != NOT_ASSESSABLE
    ]

    def figures_at(entries: list[dict[str, Any]], threshold: float, every_score: bool = False) -> dict[str, Any]:
        """As the monitor counts: films with a decision (not assessable and unreadable left out, counted); with
        every_score, every film with a score, not assessable ones included, decided by its score alone."""
        usable = [
            e
            for e in entries
            if e["error"] is None
            and e["probability"] is not None
            and (every_score or e["prediction"] != NOT_ASSESSABLE)
        ]
        labels = [int(Path(e["path"]).parent.name == "PNEUMONIA") for e in usable]
        out = rates(labels, [float(e["probability"]) for e in usable], threshold)
        out["left_out"] = len(entries) - len(usable)
        return out

    import numpy as np

    draws = []
    paths = sorted(label_of)
    for draw in range(1, DRAWS + 1):
        rng = np.random.default_rng(SEED + draw)
        judged = set(rng.choice(len(paths), N_VERDICTS, replace=False).tolist())
        judged_paths = [paths[i] for i in sorted(judged)]
        database = work / f"draw{draw}.db"
        copy_database(base, database)
        table = work / f"verdicts-draw{draw}.csv"
        table.write_text(
            "path,label\n" + "".join(f"{p},{'PNEUMONIA' if label_of[p] else 'NORMAL'}\n" for p in judged_paths),
            encoding="utf-8",
        )
        # Step 2.
        ran = cli(
            database,
            "verdicts",
            "import",
            str(table),
            "--reader",
            READER,
            "--json",
            "--database",
            f"sqlite:///{database}",
        )
        imported = json.loads(ran.stdout)
        # Step 3.
        ran = cli(database, "monitor", "--model", str(model), "--json", "--database", f"sqlite:///{database}")
        monitor = json.loads(ran.stdout)
        # Step 4.
        name = f"simulated site draw {draw}"
        ran = cli(
            database,
            "calibrate",
            "--model",
            str(model),
            "--from-verdicts",
            "--target-recall",
            f"{target_recall:g}",
            "--name",
            name,
            "--json",
        )
        calibrated = json.loads(ran.stdout)
        others = [e for e in read if str(Path(e["path"]).resolve()) not in set(judged_paths)]
        draws.append(
            {
                "draw": draw,
                "seed": SEED + draw,
                "verdicts_csv": f"WORK/{table.name}",
                "judged": {
                    "pneumonia": sum(label_of[p] for p in judged_paths),
                    "normal": sum(1 - label_of[p] for p in judged_paths),
                },
                "verdicts_import": {
                    k: imported[k]
                    for k in (
                        "rows",
                        "matched",
                        "stored",
                        "readings",
                        "unmatched_count",
                        "ambiguous_count",
                        "invalid_count",
                    )
                },
                "monitor": {
                    "readings": monitor["readings"],
                    "verdicts": monitor["verdicts"],
                    "films": monitor["films"],
                    "left_out": monitor["left_out"],
                    "threshold": monitor["threshold"],
                    "confusion": monitor["confusion"],
                    "sensitivity": monitor["sensitivity"],
                    "sensitivity_lower_95": monitor["sensitivity_lower_95"],
                    "sensitivity_upper_95": monitor["sensitivity_upper_95"],
                    "specificity": monitor["specificity"],
                    "specificity_lower_95": monitor["specificity_lower_95"],
                    "specificity_upper_95": monitor["specificity_upper_95"],
                    "claim": monitor["claim"],
                    "alerts": [a["message"] for a in monitor["alerts"]],
                    "alert_figures": [(a["figure"], a["direction"]) for a in monitor["alerts"]],
                    "proposed_threshold": (monitor["proposed"] or {}).get("threshold"),
                    "model_sha256": monitor["model_sha256"],
                    "by_name_only": monitor["by_name_only"],
                    "other_files": monitor["other_files"],
                    "notes": monitor["notes"],
                },
                "calibrate": {
                    "name": name,
                    "target_recall": target_recall,
                    "threshold": calibrated["threshold"],
                    "n": calibrated["n"],
                    "n_positive": calibrated["n_positive"],
                    "sensitivity_on_the_150": calibrated["sensitivity"],
                    "sensitivity_lower_95": calibrated["sensitivity_lower_95"],
                    "specificity_on_the_150": calibrated["specificity"],
                    "specificity_lower_95": calibrated["specificity_lower_95"],
                },
                "other_474": {
                    "at_site_point": figures_at(others, float(calibrated["threshold"])),
                    "at_card_threshold": figures_at(others, card_threshold),
                },
            }
        )

    # Step 5: the audit trail, intact then with one event edited by the sqlite3 command line tool.
    intact_db = work / "draw1.db"
    ran = cli(intact_db, "audit-log", "--verify", "--database", f"sqlite:///{intact_db}")
    intact = {"exit": ran.returncode, "stdout": ran.stdout.strip().splitlines()}
    tampered = work / "tampered.db"
    copy_database(intact_db, tampered)
    edit = (
        "DROP TRIGGER events_no_update; UPDATE events SET outcome = 'NORMAL' WHERE id = "
        "(SELECT min(id) FROM events WHERE kind = 'reading' AND outcome = 'PNEUMONIA');"
    )
    edited = subprocess.run(["sqlite3", str(tampered), edit], capture_output=True, text=True, timeout=60)
    if edited.returncode != 0:
        raise SystemExit(f"error: sqlite3 {tampered}: {edited.stderr.strip()}")
    ran = cli(tampered, "audit-log", "--verify", "--database", f"sqlite:///{tampered}", expect=(2,))
    broken = {"exit": ran.returncode, "first_line": ran.stderr.strip().splitlines()[0]}

    def median(values: list[float | None]) -> float | None:
        found = [v for v in values if v is not None]
        return statistics.median(found) if found else None

    site_points = [d["other_474"]["at_site_point"] for d in draws]
    card_points = [d["other_474"]["at_card_threshold"] for d in draws]
    return {
        "what": "a site simulated from films of another period: a PROXY (see bench/site_simulation.py's docstring)",
        "proxy": {
            "films": f"{N_NORMAL + N_PNEUMONIA} training films ({N_NORMAL} normal, {N_PNEUMONIA} pneumonia) drawn with "
            f"seed {SEED} from fold {FOLD} of models/oof_predictions.csv",
            "seen_by_the_ensemble": "yes: fold 0 is held out from one of the five networks; the other four trained on "
            "these films, and the served model is the mean of all five",
            "used_for_the_operating_point": "yes: the card's threshold was set on the out-of-fold scores of all 5,216 "
            "training films, these among them; no training film was left out of both",
            "later_period": f"each film zoomed in {ZOOM}x about its centre (edge mirrored), written as 8-bit PNG",
            "reframe_s": round(reframe_s, 1),
        },
        "model": {
            "card": card.name,
            "threshold": card_threshold,
            "target_recall": target_recall,
            "model_sha256": draws[0]["monitor"]["model_sha256"],
        },
        "zoom_effect_at_card_threshold": {
            "films_with_a_decision": {
                "as_sent_1x": figures_at(as_sent, card_threshold),
                "zoomed_1_3x": figures_at(read, card_threshold),
            },
            "every_scored_film_not_assessable_included": {
                "as_sent_1x": figures_at(as_sent, card_threshold, every_score=True),
                "zoomed_1_3x": figures_at(read, card_threshold, every_score=True),
            },
            "not_assessable": {
                "as_sent_1x": sum(1 for r in as_sent if r["prediction"] == NOT_ASSESSABLE),
                "zoomed_1_3x": sum(1 for r in read if r["prediction"] == NOT_ASSESSABLE),
                "of": len(read),
            },
        },
        "step1_predict_log": {
            "films": len(read),
            "assessable": len(assessable),
            "not_assessable": sum(1 for r in read if r["prediction"] == NOT_ASSESSABLE),
            "errors": sum(1 for r in read if r["error"]),
            "seconds": round(predict_s, 1),
            "films_per_s": round(len(read) / predict_s, 2),
            "stderr_line": logged_line.replace(str(work), "WORK") if logged_line else None,
        },
        "draws": draws,
        "step4_median_of_three_draws_on_the_other_474": {
            "site_threshold": median([d["calibrate"]["threshold"] for d in draws]),
            "sensitivity_at_site_point": median([p["sensitivity"] for p in site_points]),
            "specificity_at_site_point": median([p["specificity"] for p in site_points]),
            "sensitivity_at_card_threshold": median([p["sensitivity"] for p in card_points]),
            "specificity_at_card_threshold": median([p["specificity"] for p in card_points]),
        },
        "step5_audit": {
            "intact": intact,
            "sqlite3_edit": f'sqlite3 WORK/tampered.db "{edit}"',
            "after_edit": {**broken, "first_line": broken["first_line"].replace(str(work), "WORK")},
        },
        "commands": cli.calls,
    }


def week_database(work: Path, dest: Path) -> dict[str, Any]:
    """Step 1's readings again, each with a time over seven days (through the library: add_readings takes times),
    and draw 1's verdicts imported through the library: the Monitor page's simulated week."""
    from sqlalchemy import select

    from pneumo.integrations.records import (
        NewReading,
        ReadingSource,
        add_readings,
        close_all,
        import_verdicts,
        open_records,
    )
    from pneumo.integrations.records.schema import ReadingRow

    source = open_records(f"sqlite:///{work / 'site.db'}")
    with source.reading() as session:
        rows = list(session.scalars(select(ReadingRow).order_by(ReadingRow.id)))
    entries = []
    for i, r in enumerate(rows):
        day, slot = i % 7, i // 7  # about 89 readings a day, from 07:00 every 7 minutes
        entries.append(
            NewReading(
                source=ReadingSource(r.source_kind, r.source_name, r.study_uid, r.series_uid, r.instance_uid),
                model=r.model,
                card_hash=r.card_hash,
                operating_point=r.operating_point,
                threshold=r.threshold,
                probability=r.probability,
                decision=r.decision,
                pixel_sha256=r.pixel_sha256,
                warnings=list(r.warnings),
                error=r.error,
                time=WEEK_START + timedelta(days=day, minutes=7 * slot),
                model_sha256=r.model_sha256,
            )
        )
    url = f"sqlite:///{dest}"
    ids = add_readings(entries, user="site simulation", url=url)
    report = import_verdicts(work / "verdicts-draw1.csv", reader=READER, url=url)
    close_all()
    return {"database": f"WORK/{dest.name}", "readings": len(ids), "verdicts_stored": report.stored, "days": 7}


def screenshots(work: Path, database: Path, shots: Path) -> list[str]:
    """The Monitor page on the week's database: 1400 and 390 px wide, light and dark; the PNG paths."""
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMO_")}
    env.update(
        PNEUMO_DATABASE_URL=f"sqlite:///{database}",
        PNEUMO_MODELS_DIR=str(work / "models"),
        PNEUMO_RUNS_DIR=str(work / "runs"),
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
    )
    log = open(work / "streamlit.log", "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    written = []
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("error: streamlit did not start; see WORK/streamlit.log") from None
                time.sleep(0.5)
        shots.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"],
            )  # fmt: skip
            for width, label in ((1400, "desktop"), (390, "phone")):
                for scheme in ("light", "dark"):
                    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
                    page = context.new_page()
                    page.set_default_timeout(120_000)
                    page.goto(f"http://127.0.0.1:{port}/monitor")
                    page.get_by_role("heading", level=1).first.wait_for()
                    page.get_by_text("Operating point from the verdicts").first.wait_for()
                    page.wait_for_timeout(500)
                    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=120_000)
                    page.wait_for_timeout(1500)  # the chart draws after the script has finished
                    tall = page.evaluate(
                        'Math.max(...Array.from(document.querySelectorAll(\'[data-testid="stMain"], '
                        '[data-testid="stAppViewContainer"]\'), e => e.scrollHeight), window.innerHeight)'
                    )
                    page.set_viewport_size({"width": width, "height": min(int(tall), 6000)})
                    page.wait_for_timeout(800)
                    target = shots / f"monitor-{label}-{scheme}.png"
                    page.screenshot(path=str(target), full_page=True)
                    written.append(str(target.relative_to(ROOT)) if target.is_relative_to(ROOT) else str(target))
                    context.close()
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "site_simulation.json"))
    parser.add_argument("--work", help="the work folder (default: a new temporary folder, removed at the end)")
    parser.add_argument("--shots", help="take the Monitor page's screenshots into this folder")
    args = parser.parse_args()
    if not TRAIN.is_dir():
        raise SystemExit(f"error: {TRAIN}: the shared training folder is missing")
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="pneumo-site-"))
    if args.work:
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"error: --work {work}: not empty; give a new folder")
        work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = simulate(work)
        if args.shots:
            week = work / "week.db"
            result["week"] = week_database(work, week)
            result["week"]["screenshots"] = screenshots(work, week, Path(args.shots).resolve())
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["reproduce"] = "python bench/site_simulation.py --out bench/site_simulation.json --shots docs/monitor"
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
