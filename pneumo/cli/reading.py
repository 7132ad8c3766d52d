"""Commands that read films with a model: evaluate, predict, calibrate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo.cli.common import _progress, audit_event
from pneumo.cli.records import calibrate_from_verdicts, log_predictions, open_log, reading_entry
from pneumo.core.card import check_threshold
from pneumo.core.files import RunDataError, atomic_write_json, check_writable, load_json, write_new_file, write_new_json
from pneumo.data.collection import link_lines
from pneumo.evaluation.drift import expand
from pneumo.evaluation.site import apply_operating_point
from pneumo.model.loading import card_path, load_model, model_file, read_card
from pneumo.model.reading import DEFAULT_BAND, Repeats, read

REPORT_KEYS = frozenset({"n", "threshold", "confusion", "model", "data", "file_list_sha256_16", "threshold_source"})


def _report_target(args: argparse.Namespace) -> tuple[Path, bool]:
    """Where evaluate may write its report (resolved), and whether that replaces an earlier report.

    Refused (ValueError), before any work: a path inside the model's folder or the --data folder, a
    folder, and an existing file that is not an evaluation report: the command never writes over the
    model, its card, a film or a user's file.
    """
    out = Path(args.out).expanduser()
    target = out.resolve()
    data = Path(args.data).expanduser().resolve()
    data_folder = (
        data if data.is_dir() or data.suffix.lower() != ".csv" else data.parent
    )  # a manifest's films lie beside it
    for folder, what in (
        (model_file(args.model).resolve().parent, "the model's folder"),
        (data_folder, "the --data folder"),
    ):
        if target.is_relative_to(folder):
            raise ValueError(
                f"--out {out}: inside {what} ({folder}); refused, nothing written: write the report elsewhere"
            )
    if target.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the report a file name")
    check_writable(target)  # a read-only report, or folder, is refused before the evaluation, not after
    if not target.exists():
        return target, False
    try:
        earlier = load_json(target, max_bytes=64 * 2**20)
    except (OSError, RunDataError):
        earlier = None
    if not (isinstance(earlier, dict) and REPORT_KEYS <= set(earlier)):
        raise ValueError(
            f"--out {out}: exists and is not an earlier evaluation report; refused, nothing written "
            "(choose a new file name)"
        )
    return target, True


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumo.evaluation.external import evaluate_data

    out, replace = _report_target(args)
    if args.record:
        check_writable(card_path(model_file(args.model)))  # a read-only card is refused before any work
    # The command line follows symbolic links: it runs as the machine's user, on a folder that user named,
    # whose links are that user's own (the app, serving others, does not; see pneumo.data.collection.scan).
    report = evaluate_data(
        args.model,
        args.data,
        args.threshold,
        args.split,
        progress=_progress("evaluate"),
        operating_point=args.operating_point,
        follow_links=True,
    )
    if replace:
        atomic_write_json(out, report)  # an earlier report, replaced whole
    else:
        write_new_json(out, report)  # a new file, never one that appeared meanwhile
    if args.record:
        from pneumo.evaluation.external import record_evaluation

        card = record_evaluation(report, args.record)
        print(f"recorded '{args.record}' in {card}", file=sys.stderr)
    keys = ("n", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold")
    print("  ".join(f"{k} {report[k]:.4f}" if isinstance(report[k], float) else f"{k} {report[k]}" for k in keys))
    drift = report.get("drift") or {}
    print(
        f"drift: {'SHIFTED' if drift.get('shifted') else 'no shift found'} "
        f"(p = {drift['p_value']:.3g}, n = {drift['n']})"
        if drift.get("available")
        else f"drift: not checked ({drift.get('reason', 'no reference')})",
        file=sys.stderr,
    )
    for line in link_lines(report.get("links") or {}):
        print(f"links: {line}", file=sys.stderr)
    print(f"report written to {args.out}", file=sys.stderr)
    return 0


def _predict_paths(given: Sequence[str]) -> list[str]:
    """A folder stands for every image file under it, sorted (drift's expansion); any other path stays as given,
    so a missing or unreadable file is answered in its own entry."""
    paths: list[str] = []
    for path in given:
        if Path(path).is_dir():
            found = expand([path])
            if not found:
                raise ValueError(f"{path}: no image files in this folder")
            paths += found
        else:
            paths.append(path)
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    loaded = load_model(args.model)
    if args.threshold is not None and args.operating_point:
        raise ValueError("give --threshold or --operating-point, not both")
    if args.operating_point:
        loaded = apply_operating_point(loaded, args.operating_point)
    if args.threshold is not None:
        loaded.card.threshold = check_threshold(args.threshold, "--threshold")
        loaded.operating_point = "--threshold"
    if args.cam and Path(args.cam).exists() and not Path(args.cam).is_dir():
        raise ValueError(f"--cam {args.cam}: exists and is not a folder")
    if args.band is not None and not 0.0 <= args.band <= 0.5:
        raise ValueError(f"--band must be between 0 and 0.5; got {args.band}")
    paths = _predict_paths(args.paths)
    results = []
    repeats = Repeats()
    cautions = loaded.card.cautions()
    logged: list[Any] = []  # --log: rows to store, pixel hashes taken as each film is read (films are not kept)
    if getattr(args, "log", False):
        open_log()  # an unusable database is refused before any film is read
    for i, path in enumerate(paths):
        reading = repeats.note(i, read(loaded, path, band=DEFAULT_BAND if args.band is None else args.band))
        if getattr(args, "log", False):
            logged.append(reading_entry(loaded, reading, path))
        entry: dict[str, Any] = {
            "path": path,
            "probability": reading.probability,
            "probability_calibrated": reading.calibrated,
            "prediction": reading.decision,
            "threshold": loaded.threshold,
            "operating_point": loaded.operating_point,
            "warnings": reading.warnings,
            "cautions": cautions,
            "repeat_of": paths[reading.repeat_of] if reading.repeat_of is not None else None,
            "error": f"{reading.name}: {reading.error}" if reading.error else None,
        }
        if args.cam and reading.xray is not None:
            entry["cam"], problem = _write_overlay(loaded, reading.xray.pixels, Path(args.cam), Path(path).stem)
            if problem:  # the probability stands; the entry says its overlay is missing, and the exit status is 2
                entry["error"] = f"{reading.name}: Grad-CAM overlay not written ({problem})"
        results.append(entry)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for caution in cautions:
            print(f"caution: this model {caution}", file=sys.stderr)
        for r in results:
            if r["error"]:
                print(f"{r['path']}: ERROR {r['error']}")
            else:
                print(
                    f"{r['path']}: {r['prediction']}  p={r['probability']:.4f}  (threshold {r['threshold']:.4f})"
                    + (
                        f"  calibrated probability {r['probability_calibrated']:.3f}"
                        if r["probability_calibrated"] is not None
                        else ""
                    )
                    + "".join(f"\n  warning: {w}" for w in r["warnings"])
                )
    # After the output: a database that fails costs the log, not the readings already printed.
    if getattr(args, "log", False):
        log_predictions(logged)
    return 2 if any(r["error"] for r in results) else 0


def _write_overlay(loaded: Any, pixels: Any, folder: Path, stem: str) -> tuple[str | None, str | None]:
    """One Grad-CAM overlay PNG under a name no file had: (its path, None), or (None, why it failed).

    Named STEM_gradcam.png, or STEM_gradcam-2.png, … when that is taken (by a user's file, an earlier run,
    another input with the same name or a concurrent run): created exclusively, never over anything, and a
    full disk leaves no partial file (see runs.write_new_file).
    """
    from pneumo.model.explain import gradcam, overlay, png_bytes  # Grad-CAM needs TensorFlow; plain predictions do not

    data = png_bytes(overlay(pixels, gradcam(loaded, pixels, "gradcam"), 0.4))
    try:
        return str(write_new_file(folder, f"{stem[:150]}_gradcam.png", data, unique=True)), None
    except OSError as exc:
        return None, exc.strerror or str(exc)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pneumo.evaluation.site import calibrate, check_can_record, record

    if getattr(args, "from_verdicts", False):  # a Namespace built by hand (tests) may not carry the flag
        return calibrate_from_verdicts(args)
    if not args.data:
        raise ValueError("give --data (the site's labelled films) or --from-verdicts")
    replace = bool(args.replace)
    loaded = load_model(args.model)
    # Before any work: a read-only card, a bad name, or a name already in the card without --replace.
    check_can_record(loaded.path, args.name, replace)
    # Links followed, as evaluate does (see cmd_evaluate): the count is said below.
    result = calibrate(
        loaded, args.data, args.target_recall, args.name, progress=_progress("calibrate"), follow_links=True
    )
    card = record(loaded.path, result, replace=replace)
    # What the point replaced, as written under the card's lock (not as read before the calibration).
    written = next(p for p in read_card(card).site_operating_points if p.get("name") == result.name)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:

        def bound(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        print(
            f"site '{result.name}': threshold {result.threshold:.4f} on {result.n} films "
            f"({result.n_positive} pneumonia, {result.n_negative} normal)"
        )
        print(
            f"  sensitivity {result.sensitivity:.4f} (one-sided 95 % lower bound {bound(result.sensitivity_lower_95)})"
        )
        print(
            f"  specificity {bound(result.specificity)} "
            f"(one-sided 95 % lower bound {bound(result.specificity_lower_95)})"
        )
        needed = result.positives_needed
        print(
            f"  pneumonia films still needed for the bound to reach {args.target_recall:g}: "
            + ("none" if needed == 0 else "no number at this sensitivity" if needed is None else str(needed))
        )
        if result.note:
            print(f"  note: {result.note}")
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    for line in link_lines(result.links):
        print(f"links: {line}", file=sys.stderr)
    if written.get("replaces"):
        old = written["replaces"]
        print(
            f"replaced site operating point '{result.name}' (threshold {old.get('threshold')}, set "
            f"{old.get('date') or 'at an unknown date'}) with threshold {result.threshold:.4f}",
            file=sys.stderr,
        )
    print(f"recorded site operating point '{result.name}' in {card}", file=sys.stderr)
    audit_event(
        "threshold_saved",
        str(card),
        details={"site_point": result.name, "threshold": result.threshold, "n": result.n, "replaced": replace},
    )
    return 0
