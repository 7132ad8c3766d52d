"""Command line: `python -m pneumo <command>`; the parser and the one place user errors become one line.

The commands live beside this file, grouped by what they do (modelling, reading, auditing, pacs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pneumo import import_tensorflow_quietly
from pneumo.cli.auditing import (
    cmd_audit_labels,
    cmd_audit_shortcuts,
    cmd_docs,
    cmd_drift,
    cmd_drift_reference,
    cmd_summarize,
)
from pneumo.cli.common import add_operating_point_flag
from pneumo.cli.modelling import (
    add_config_flags,
    cmd_calibrate_probability,
    cmd_ensemble,
    cmd_export,
    cmd_input_check,
    cmd_population_fold,
    cmd_sweep,
    cmd_train,
    cmd_validate,
)
from pneumo.cli.pacs import cmd_pacs_screen, cmd_pacs_watch, positive_count, positive_seconds
from pneumo.cli.reading import cmd_calibrate, cmd_evaluate, cmd_predict
from pneumo.cli.records import add_parsers as add_records_parsers
from pneumo.cli.screening import add_parser as add_screen_parser
from pneumo.core.text import terminal_safe
from pneumo.data.collection import DatasetError
from pneumo.model.serving import ExportError

# The modules behind the heavier commands (pandas, scikit-learn, OpenCV, TensorFlow) are imported in those commands:
# `python -m pneumo --help` and the light commands start in under a second.


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The command line; train_flags=False skips train's flags, whose model choices import Keras."""
    parser = argparse.ArgumentParser(
        prog="pneumo", description="Chest X-ray pneumonia screening: train, evaluate, predict, explain."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a run directory")
    if train_flags:
        add_config_flags(p)
    p.add_argument("--config", help="a config.json to start from (flags override it)")
    p.add_argument("--out", required=True, help="run directory to create (must be new, empty, or prepared by the app)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an ended (finished, failed or stopped) pneumo run in --out; other files are never touched",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ensemble", help="average several runs (one validation split) into one model")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--target-recall", dest="target_recall", type=float, default=0.98)
    p.add_argument(
        "--population",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="with fold runs: a leave-population-out run (e.g. --split family) reported at the ensemble's "
        "threshold (repeatable)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier ensemble in --out")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser(
        "population-fold",
        help="leave-population-out runs (train --split family) at a built model's threshold: how its recipe "
        "does on a population it never saw",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished leave-population-out runs")
    p.add_argument("--model", help="default: the shipped model")
    p.add_argument("--record", action="store_true", help="store the figures in the model's card")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_population_fold)

    p = sub.add_parser("evaluate", help="metrics of a model on a labelled folder")
    p.add_argument("--model", help="path to a .keras model (default: the shipped model)")
    p.add_argument("--data", required=True)
    p.add_argument("--threshold", type=float, help="default: the operating threshold in the model card")
    p.add_argument("--split", help="only this split (train/val/test) of a split-folder layout")
    p.add_argument("--out", required=True, help="report JSON path")
    p.add_argument(
        "--record",
        metavar="NAME",
        help="append this evaluation (name, file-list hash, date, n, figures) to the model card's external evaluations",
    )
    add_operating_point_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="probability of pneumonia for image files")
    p.add_argument("--model")
    p.add_argument("--threshold", type=float)
    p.add_argument("--cam", help="write a Grad-CAM overlay PNG per image into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    add_operating_point_flag(p)
    p.add_argument(
        "--band",
        type=float,
        default=None,
        help="uncertain band (± score around the threshold) reported as 'UNCERTAIN — review' "
        "(default: the app's, 0.05)",
    )
    p.add_argument("--log", action="store_true", help="store each reading in the records database (see monitor)")
    p.add_argument("paths", nargs="+", help="image files or folders (every image file under a folder, sorted)")
    p.set_defaults(func=cmd_predict)
    add_screen_parser(sub)

    p = sub.add_parser("export", help="write model.onnx beside a model, so ONNX Runtime serves it (faster on a CPU)")
    p.add_argument("model", nargs="?", help="a .keras model or its folder (default: the shipped model)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("validate", help="compare runs on their shift checks (held-out split, stress suite, seeds)")
    p.add_argument("runs", nargs="+", help="run directories trained with this version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "audit-labels",
        help="suspected label errors of a labelled collection (confident learning on out-of-fold predictions)",
    )
    p.add_argument("data")
    p.add_argument("--model", help="default: the shipped model, whose oof_predictions.csv scores its training films")
    p.add_argument("--limit", type=int, default=0, help="list at most this many suspects (0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_labels)

    p = sub.add_parser(
        "pacs", help="screen studies of a PACS over DICOMweb and store the results back (DICOM SR + overlay)"
    )
    pacs_sub = p.add_subparsers(dest="pacs_command", required=True)
    for name, func, help_text in (
        ("screen", cmd_pacs_screen, "screen studies once: one JSON entry per image"),
        ("watch", cmd_pacs_watch, "poll for new studies and screen them (the triage loop)"),
    ):
        q = pacs_sub.add_parser(name, help=help_text)
        q.add_argument(
            "--url", help="the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (default: PNEUMO_PACS_URL)"
        )
        q.add_argument("--model", help="default: the shipped model")
        q.add_argument(
            "--since", help="studies from this date (YYYYMMDD)" + ("; default: today" if name == "watch" else "")
        )
        q.add_argument(
            "--push", action="store_true", help="store each reading into its study (SR and Grad-CAM overlay)"
        )
        q.add_argument(
            "--timeout",
            type=positive_seconds,
            help="seconds a whole request may take, retries included (default 30)",
        )
        q.add_argument(
            "--json", action="store_true", help="JSON output" + (" (one line per image)" if name == "watch" else "")
        )
        if name == "screen":
            q.add_argument("--study", action="append", metavar="UID", help="a StudyInstanceUID (repeatable)")
            q.add_argument("--until", help="studies up to this date (YYYYMMDD)")
            q.add_argument("--accession", help="the study with this accession number")
            q.add_argument(
                "--limit",
                type=positive_count,
                default=200,
                help="at most this many studies from a search (default 200)",
            )
            q.add_argument(
                "--log", action="store_true", help="store each reading in the readings database (PNEUMO_DATABASE_URL)"
            )
            q.add_argument(
                "--force",
                action="store_true",
                help="screen again films this model and operating point have already screened",
            )
        else:
            q.add_argument(
                "--interval",
                type=positive_seconds,
                default=60.0,
                help="seconds between polls (default 60; longer while the server fails)",
            )
            q.add_argument(
                "--max-polls", dest="max_polls", type=int, help="stop after this many polls (default: never)"
            )
        q.set_defaults(func=func)

    p = sub.add_parser(
        "drift", help="is a batch of films (unlabelled) unlike the films the operating point was set on?"
    )
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", help="default: the shipped model (needs drift_reference.npz beside it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser(
        "drift-reference", help="build the drift check's reference beside a model and record it in its card"
    )
    p.add_argument("--model", help="default: the shipped model")
    p.add_argument(
        "--predictions",
        help="held-out films: CSV path,label,probability[,patient_id][,fold] (default: "
        "oof_predictions.csv beside the model, fold 1 only, else val_predictions.csv)",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=1000,
        help="in-distribution batches of 50 drawn to measure the false-alarm rate (a fifth as many per "
        "stress condition for power; default 1000)",
    )
    p.set_defaults(func=cmd_drift_reference)

    p = sub.add_parser(
        "input-check",
        help="fit the wrong-input check again (warning and refusal levels, orientation classifier) on the films "
        "the model was checked on, save it beside the model and record it in its card",
    )
    p.add_argument("--model", help="default: the shipped model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_input_check)

    p = sub.add_parser("calibrate", help="set a named site operating point on a site's labelled films, with bounds")
    p.add_argument("--model", help="default: the shipped model")
    p.add_argument("--data", help="the site's labelled films (any layout evaluate reads); or --from-verdicts")
    p.add_argument(
        "--from-verdicts",
        dest="from_verdicts",
        action="store_true",
        help="set the point on the readers' verdicts in the records database (see monitor) instead of --data",
    )
    p.add_argument("--target-recall", dest="target_recall", type=float, required=True)
    p.add_argument("--name", required=True, help="the site operating point's name")
    p.add_argument("--replace", action="store_true", help="replace a site operating point of the same name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("docs", help="regenerate the README's and EXPERIMENTS.md's model tables from models/card.json")
    p.add_argument("--check", action="store_true", help="exit 2 if a table differs from its source, writing nothing")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser(
        "audit-shortcuts",
        help="how well cues that are not anatomy (framing, border, corner marks, intensity) predict the labels",
    )
    p.add_argument("data", help="a labelled folder (any layout summarize reads)")
    p.add_argument("--model", help="whose framing sweep to show beside (default: the shipped model)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds by patient (default: 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_shortcuts)

    p = sub.add_parser(
        "sweep",
        help="the decision at the operating point under framing (zoom 0.7–1.6, shifts, aspect) "
        "and the stress suite, on films the model never trained on",
    )
    p.add_argument("--model", help="default: the shipped model")
    p.add_argument("--limit", type=int, default=1500, help="films scored, sampled by patient (default: 1500)")
    p.add_argument(
        "--at-recall",
        type=float,
        help="at the highest threshold keeping this sensitivity on the stored predictions, not the card's "
        "(compares recipes at equal recall)",
    )
    p.add_argument(
        "--fold",
        type=int,
        help="a cross-fitted ensemble's fold K alone, each film scored by member K (compares with a single run "
        "held out on the same fold)",
    )
    p.add_argument("--record", action="store_true", help="store the result in the model's card (shift_checks.framing)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "calibrate-probability",
        help="fit the map from score to probability of pneumonia on the out-of-fold predictions (Platt) "
        "and measure its calibration error out of fold",
    )
    p.add_argument("--model", help="default: the shipped model (needs oof_predictions.csv beside it)")
    p.add_argument("--record", action="store_true", help="store the map in the model's card: every reading shows it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate_probability)

    p = sub.add_parser("summarize", help="dataset summary")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summarize)
    add_records_parsers(sub)  # verdicts import, audit-log, monitor (pneumo.cli.records)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if set(words) & {"train", "ensemble", "export"}:
        import_tensorflow_quietly()  # before the parser: train's flags come from the model registry
    args = build_parser(train_flags="train" in words).parse_args(argv)
    try:
        return int(args.func(args))
    except (DatasetError, ValueError, OSError, RecursionError, OverflowError, ExportError) as exc:
        # CardError, ModelLoadError, RunFolderError, RunDataError, PredictionsError are ValueErrors,
        # ReadOnlyError an OSError; RecursionError: JSON nested beyond the parser.
        # User errors (bad data, card, model, folder, arguments): one line, never a traceback. A TypeError or
        # KeyError is a bug in pneumo, not in what the user gave: it keeps its traceback.
        # The message may quote a file name, a field or a server's answer: escaped and cut for the terminal.
        print(f"error: {terminal_safe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
