"""Command line: python -m pneumo {train,ensemble,evaluate,predict,export,validate,summarize}."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pneumo import import_tensorflow_quietly
from pneumo.core.card import check_threshold
from pneumo.core.files import RunDataError, atomic_write_json, check_writable, load_json, write_new_file, write_new_json
from pneumo.core.paths import DEFAULT_MODEL_PATH
from pneumo.data.collection import DatasetError, summarize
from pneumo.evaluation.audit import audit_folder, review_path, summary
from pneumo.evaluation.drift import check_paths, expand
from pneumo.evaluation.drift_reference import build
from pneumo.evaluation.site import apply_operating_point
from pneumo.integrations import docs
from pneumo.integrations.pacs import (
    Pacs,
    PacsConfig,
    PacsError,
    ScreenRun,
    describe,
    load_secrets_file,
    screen_studies,
    search_studies,
    watch,
)
from pneumo.model.loading import LoadedModel, card_path, load_keras_model, load_model, model_file, read_card
from pneumo.model.reading import DEFAULT_BAND, Repeats, read
from pneumo.model.serving import ExportError, export_onnx
from pneumo.training.job import TrainConfig, field_choices, train

# The modules behind the heavier commands (pandas, scikit-learn, OpenCV, TensorFlow) are imported in those commands:
# `python -m pneumo --help` and the light commands start in under a second.


def _bar(total: int, desc: str) -> Any:
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)


def _progress(desc: str) -> Any:
    """A callback(done, total) drawing a tqdm bar on stderr."""
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = _bar(total, desc)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def cmd_train(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    if args.config:
        loaded = json.loads(Path(args.config).read_text())  # a missing or broken file is an error, not defaults
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: a config must be a JSON object")
        values.update(loaded)
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None})
    if args.config is None and args.data is None:
        print("error: --data DIR is required (or --config with a data entry)", file=sys.stderr)
        return 2
    config = TrainConfig.from_dict(values).validate()
    bars: dict[str, Any] = {}

    def hook(record: dict[str, Any]) -> None:
        if record["type"] == "progress":
            bar = bars.get("bar")
            if bar is None or bars.get("epoch") != record["epoch"]:
                if bar is not None:
                    bar.close()
                bar = bars["bar"] = tqdm(
                    total=record["batches"],
                    desc=f"epoch {record['epoch']}/{record['epochs']}",
                    unit="batch",
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                )
                bars["epoch"] = record["epoch"]
            bar.update(record["batch"] - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.3f}", eta=f"{record['eta_s']:.0f}s")
        elif record["type"] == "epoch":
            print(
                f"epoch {record['epoch']}/{record['epochs']}  loss {record.get('loss', 0):.4f}  "
                f"val_loss {record.get('val_loss', 0):.4f}  val_auc {record.get('val_auc', 0):.4f}  "
                f"val_recall {record.get('val_recall', 0):.3f}  lr {record['lr']:.2e}  {record['seconds']:.0f}s"
                + ("  *best" if record.get("best") else ""),
                file=sys.stderr,
                flush=True,
            )

    card = train(config, args.out, hook=hook, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "run": str(args.out),
                "threshold": card.threshold,
                "validation": card.validation,
                "stress_worst": card.shift_checks.get("stress", {}).get("worst_auc"),
            },
            indent=2,
        )
    )
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pneumo.training.crossfit import ensemble_folds, is_fold_run
    from pneumo.training.job import ensemble

    if all(is_fold_run(r) for r in args.runs):  # one network per fold: the cross-fitted ensemble
        card = ensemble_folds(
            args.runs, args.out, args.target_recall, population_runs=args.population, overwrite=args.overwrite
        )
    elif args.population:
        raise ValueError("--population goes with fold runs (train them with --split fold)")
    else:
        card = ensemble(args.runs, args.out, args.target_recall, overwrite=args.overwrite)
    print(
        json.dumps(
            {"model": str(Path(args.out) / "model.keras"), "threshold": card.threshold, "validation": card.validation},
            indent=2,
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = Path(args.model) if args.model else DEFAULT_MODEL_PATH
    path = path / "model.keras" if path.is_dir() else path
    loaded = LoadedModel(load_keras_model(path), read_card(path), path)
    from pneumo.model.explain import cam_functions

    written = export_onnx(loaded.model, path, loaded.gradcam_layer, cam_functions(loaded.model, loaded.gradcam_layer))
    print(f"written {written}", file=sys.stderr)
    return 0


# What every evaluation report holds: an existing --out file without these keys is someone else's file.
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
    report = evaluate_data(
        args.model,
        args.data,
        args.threshold,
        args.split,
        progress=_progress("evaluate"),
        operating_point=args.operating_point,
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
    for i, path in enumerate(paths):
        reading = repeats.note(i, read(loaded, path, band=DEFAULT_BAND if args.band is None else args.band))
        entry: dict[str, Any] = {
            "path": path,
            "probability": reading.probability,
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
                    + "".join(f"\n  warning: {w}" for w in r["warnings"])
                )
    return 2 if any(r["error"] for r in results) else 0


def cmd_audit_labels(args: argparse.Namespace) -> int:
    audited = audit_folder(args.data, args.model, progress=_progress("audit"))
    suspects = audited[audited["suspect"]].head(args.limit or None)
    info = summary(audited)
    if args.json:
        rows = [
            {
                "path": r.path,
                "label": int(r.label),
                "probability": float(r.probability),
                "score": float(r.score),
                "source": r.source,
            }
            for r in suspects.itertuples()
        ]
        print(json.dumps({**info, "review_file": str(review_path(args.data)), "suspected": rows}, indent=2))
        return 0
    print(
        f"{info['suspects']} of {info['n']} films are suspected label errors ({info['suspect_share']:.1%}); "
        f"by given label: {info['suspects_by_label']}"
    )
    for r in suspects.itertuples():
        print(f"{r.score:.4f}  label {int(r.label)}  p={r.probability:.4f}  {r.source:<11}  {r.path}")
    print(
        f"verdicts (keep, relabel, exclude) go in {review_path(args.data)}; train --label-review applies them",
        file=sys.stderr,
    )
    return 0


def _pacs_session(args: argparse.Namespace) -> tuple[Any, Any]:
    """The server (URL from --url or the deployment's configuration, credentials from the environment or
    .streamlit/secrets.toml) and the model in force."""
    config = PacsConfig.load(load_secrets_file(), url=args.url)
    if config is None:
        raise ValueError("no PACS: give --url DICOMWEB_URL or set PNEUMO_PACS_URL")
    if args.timeout is not None:
        config.timeout = args.timeout
    return Pacs.from_config(config), load_model(args.model)


def _print_pacs_run(run: Any, as_json: bool, lines: bool = False) -> None:
    if as_json:
        entries = [r.to_json() for r in run.results]
        if lines:  # watch: one line per image as each poll ends
            for entry in entries:
                print(json.dumps(entry), flush=True)
        else:
            print(json.dumps(entries, indent=2), flush=True)
    else:
        for r in run.results:
            print(describe(r), flush=True)
    if run.drift_note:
        print(f"batch drift: {run.drift_note}", file=sys.stderr)
    if run.error:
        left = f" ({len(run.studies_left)} studies not reached; run again to resume)" if run.studies_left else ""
        print(f"error: {run.error}{left}", file=sys.stderr, flush=True)
    for r in run.results:
        if r.error and r.error != run.error and not as_json:
            print(f"error: {r.error}", file=sys.stderr)


def cmd_pacs_screen(args: argparse.Namespace) -> int:
    server, loaded = _pacs_session(args)
    uids = list(args.study or [])
    try:
        if not uids or args.since or args.until or args.accession:
            uids = [
                s.study_uid
                for s in search_studies(
                    server,
                    since=args.since,
                    until=args.until,
                    accession=args.accession,
                    study_uids=uids,
                    limit=args.limit,
                )
            ]
    except PacsError as exc:  # still one JSON array (empty), and the one line on stderr
        run = ScreenRun(error=str(exc))
    else:
        # A progress bar only on a terminal: piped stderr keeps to the error lines.
        run = screen_studies(
            server,
            loaded,
            uids,
            push=args.push,
            force=args.force,
            progress=_progress("pacs screen") if sys.stderr.isatty() else None,
        )
    _print_pacs_run(run, args.json)
    return 2 if run.failed else 0


def cmd_pacs_watch(args: argparse.Namespace) -> int:
    server, loaded = _pacs_session(args)
    failed = watch(
        server,
        loaded,
        interval=args.interval,
        max_polls=args.max_polls,
        since=args.since,
        push=args.push,
        on_poll=lambda run: _print_pacs_run(run, args.json, lines=True),
    )
    return 2 if failed else 0


def cmd_drift(args: argparse.Namespace) -> int:
    paths = expand(args.paths)
    if not paths:
        raise ValueError("no image files in the paths given")
    result, unreadable = check_paths(load_model(args.model), paths, progress=_progress("drift"))
    out = result.to_dict()
    if args.json:
        print(
            json.dumps(
                {
                    **{k: out[k] for k in ("shifted", "p_value", "n", "method", "reference")},
                    "alpha": out["alpha"],
                    "tests": out["tests"],
                    "skipped": out["skipped"],
                    "unreadable": unreadable,
                },
                indent=2,
            )
        )
    else:
        print(
            f"{'SHIFTED' if result.shifted else 'no shift found'}  p = {result.p_value:.3g}  n = {result.n}  "
            f"(alpha {result.alpha}; reference: {result.reference})"
        )
        for t in result.tests:
            print(f"  {t['stratum']:<20} {t['kind']:<26} n {t['n']:>4}  D {t['statistic']:.3f}  p {t['p_value']:.3g}")
        for line in result.skipped:
            print(f"  not tested: {line}")
        print(result.advice)
        for u in unreadable:
            print(f"  unreadable: {u['path']}: {u['error']}", file=sys.stderr)
    return 0


def cmd_drift_reference(args: argparse.Namespace) -> int:
    if args.draws < 20:
        raise ValueError(f"--draws must be at least 20, got {args.draws}")
    reference = build(
        args.model,
        args.predictions,
        progress=_progress("drift reference"),
        draws=args.draws,
        power_draws=max(20, args.draws // 5),
    )
    section = reference.card_section()
    print(
        json.dumps(
            {
                k: section[k]
                for k in ("reference", "n_fit", "n_reference", "n_calibration", "score_source", "false_alarms", "power")
            },
            indent=2,
        )
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pneumo.evaluation.site import calibrate, check_writable, record

    loaded = load_model(args.model)
    check_writable(loaded.path)
    result = calibrate(loaded, args.data, args.target_recall, args.name, progress=_progress("calibrate"))
    card = record(loaded.path, result)
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
    print(f"recorded site operating point '{result.name}' in {card}", file=sys.stderr)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    if args.check:
        stale = [name for name in docs.BLOCKS if docs.current(name) != docs.expected(name)]
        for name in stale:
            print(
                f"{docs.BLOCKS[name][0]}: block '{name}' differs from its source; run: python -m pneumo docs",
                file=sys.stderr,
            )
        return 2 if stale else 0
    for path in docs.write():
        print(f"updated {path}", file=sys.stderr)
    return 0


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


def cmd_validate(args: argparse.Namespace) -> int:
    from pneumo.evaluation.validate import compare

    rows, recipes = compare(args.runs)
    if args.json:
        print(
            json.dumps({"runs": rows.to_dict("records"), "recipes": recipes.to_dict("records")}, indent=2, default=str)
        )
    else:
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print()
        print(recipes.T.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pneumo.evaluation.validate import sweep_model

    loaded = load_model(args.model)
    if args.record:
        check_writable(card_path(loaded.path))  # a read-only card is refused before any work
    if args.limit < 50:
        raise ValueError(f"--limit must be at least 50 films, got {args.limit}")
    block = sweep_model(loaded, limit=args.limit, progress=_progress("framing and stress"))
    if args.record:
        from pneumo.evaluation.framing import record_in_card

        print(f"recorded in {record_in_card(card_path(loaded.path), block)}", file=sys.stderr)
    if args.json:
        print(json.dumps(block, indent=2))
        return 0
    print(block["how"])
    for row in block["conditions"] + block["stress"]:
        print(_decision_line(row))
    for caution in block["cautions"]:
        print(f"caution: {caution}", file=sys.stderr)
    return 0


def _decision_line(row: dict[str, Any]) -> str:
    def fig(key: str) -> str:
        iv = row.get(f"{key}_95") or {}
        value = row.get(key)
        if value is None:
            return f"{key} n/a"
        span = f" [{iv['low']:.3f}–{iv['high']:.3f}]" if iv.get("low") is not None else ""
        return f"{key} {value:.3f}{span}"

    return f"{row['condition'][:28]:28s}  " + "  ".join(
        fig(k) for k in ("sensitivity", "specificity", "flagged_fraction", "roc_auc")
    )


def cmd_audit_shortcuts(args: argparse.Namespace) -> int:
    from pneumo.evaluation.shortcuts import audit_folder

    if args.folds < 2:
        raise ValueError(f"--folds must be at least 2, got {args.folds}")
    report = audit_folder(args.data, folds=args.folds, progress=_progress("cues"))
    if args.model or not args.json:
        card = read_card(model_file(args.model))
        report["model_framing"] = card.shift_checks.get("framing")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(report["how"])
    for row in report["cues"]:
        print(f"  {row['cue']:20s} ROC AUC {row['roc_auc']:.3f}  ({row['kind']}: {row['meaning']})")
    print(f"  {'all cues together':20s} ROC AUC {report['all_cues_roc_auc']:.3f}")
    print("framing by class (p10 / median / p90):")
    for row in report["framing_by_class"]:
        print(f"  {row['class']:9s} {row['cue']:18s} {row['p10']:.3f} / {row['median']:.3f} / {row['p90']:.3f}")
    framing = report.get("model_framing")
    if framing:
        print(f"the model's decision under the framing sweep ({framing['how']}):")
        for row in framing["conditions"]:
            print("  " + _decision_line(row))
    else:
        print("the model's card records no framing sweep: python -m pneumo sweep --record measures it")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    summary = summarize(args.data, progress=_progress("summarize"))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    d = summary.to_dict()
    print(f"{d['root']}  ({d['layout']}, {d['n_images']} images)\n")
    print(summary.counts.to_string())
    print(f"\nimbalance ratio      {d['imbalance_ratio']}  (class weights {d['class_weights']})")
    print(f"patients per class   {d['patients_per_class']}")
    print(f"images per patient   mean {d['images_per_patient']['mean']}, max {d['images_per_patient']['max']}")
    print(f"subtypes             {d['subtypes']}")
    print(f"duplicate groups     {len(d['duplicate_groups'])}")
    print(f"image size           {d['image_size']}")
    print(f"unreadable           {len(d['unreadable'])}")
    for u in d["unreadable"][:20]:
        print(f"  {u['path']}: {u['reason']}")
    return 0


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and documented from the field itself."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta, default = f.metadata, f.default
        choices = field_choices(f)
        help_text = f"{meta.get('help', '')} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = type(default) if default is not None else int
            parser.add_argument(flag, dest=f.name, type=kind, choices=choices, default=None, help=help_text)


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
    p.add_argument(
        "--operating-point",
        dest="operating_point",
        metavar="NAME",
        help="a site operating point recorded in the card (default: the card's own, 'shipped')",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="probability of pneumonia for image files")
    p.add_argument("--model")
    p.add_argument("--threshold", type=float)
    p.add_argument("--cam", help="write a Grad-CAM overlay PNG per image into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.add_argument(
        "--operating-point",
        dest="operating_point",
        metavar="NAME",
        help="a site operating point recorded in the card (default: the card's own, 'shipped')",
    )
    p.add_argument(
        "--band",
        type=float,
        default=None,
        help="uncertain band (± probability around the threshold) reported as 'UNCERTAIN — review' "
        "(default: the app's, 0.05)",
    )
    p.add_argument("paths", nargs="+", help="image files or folders (every image file under a folder, sorted)")
    p.set_defaults(func=cmd_predict)

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
        q.add_argument("--timeout", type=float, help="seconds to wait for the server per request (default 30)")
        q.add_argument(
            "--json", action="store_true", help="JSON output" + (" (one line per image)" if name == "watch" else "")
        )
        if name == "screen":
            q.add_argument("--study", action="append", metavar="UID", help="a StudyInstanceUID (repeatable)")
            q.add_argument("--until", help="studies up to this date (YYYYMMDD)")
            q.add_argument("--accession", help="the study with this accession number")
            q.add_argument(
                "--limit", type=int, default=200, help="at most this many studies from a search (default 200)"
            )
            q.add_argument(
                "--force",
                action="store_true",
                help="screen again films this model and operating point have already screened",
            )
        else:
            q.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
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

    p = sub.add_parser("calibrate", help="set a named site operating point on a site's labelled films, with bounds")
    p.add_argument("--model", help="default: the shipped model")
    p.add_argument("--data", required=True, help="the site's labelled films (any layout evaluate reads)")
    p.add_argument("--target-recall", dest="target_recall", type=float, required=True)
    p.add_argument("--name", required=True, help="the site operating point's name")
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
    p.add_argument("--record", action="store_true", help="store the result in the model's card (shift_checks.framing)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("summarize", help="dataset summary")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summarize)
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
