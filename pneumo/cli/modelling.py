"""Commands that make and compare models: train, ensemble, export, validate, sweep."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pneumo.cli.common import _decision_line, _progress, audit_event
from pneumo.core.files import check_writable
from pneumo.core.paths import DEFAULT_MODEL_PATH
from pneumo.model.loading import LoadedModel, card_path, load_keras_model, load_model, model_file, read_card
from pneumo.model.serving import export_onnx
from pneumo.training.job import TrainConfig, field_choices, train


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

    audit_event("training_started", str(args.out), details={"data": str(config.data), "model": config.model})
    try:
        card = train(config, args.out, hook=hook, overwrite=args.overwrite)
    except BaseException as exc:  # a failed or interrupted run is an event too, then the error goes on
        audit_event("training_stopped", str(args.out), "failed", details={"error": str(exc)[:500]})
        raise
    audit_event("training_stopped", str(args.out), details={"threshold": card.threshold})
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


def cmd_population_fold(args: argparse.Namespace) -> int:
    from pneumo.training.crossfit import population_run_figures, record_population_runs

    model = model_file(args.model)
    if not model.exists():
        raise ValueError(f"--model {args.model}: no model there")
    model_dir = model.parent
    if args.record:
        check_writable(card_path(model_dir / "model.keras"))  # a read-only card is refused before any work
        rows = record_population_runs(model_dir, args.runs)
        print(f"recorded in {card_path(model_dir / 'model.keras')}", file=sys.stderr)
    else:
        rows = population_run_figures(model_dir, args.runs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def three(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for r in rows:
        print(
            f"{r['run']} (held out: {r['held_out']}): n = {r['n']}, ROC AUC {three(r['roc_auc'])}, "
            f"sensitivity {three(r['sensitivity'])}, specificity {three(r['specificity'])}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = Path(args.model) if args.model else DEFAULT_MODEL_PATH
    path = path / "model.keras" if path.is_dir() else path
    loaded = LoadedModel(load_keras_model(path), read_card(path), path)
    from pneumo.model.explain import cam_functions

    written = export_onnx(loaded.model, path, loaded.gradcam_layer, cam_functions(loaded.model, loaded.gradcam_layer))
    print(f"written {written}", file=sys.stderr)
    audit_event("export", str(written), details={"model": str(path)})
    return 0


# What every evaluation report holds: an existing --out file without these keys is someone else's file.


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
    if args.at_recall is not None and args.record:  # the card's figures are at the card's own threshold
        raise ValueError("--at-recall compares models at equal recall; it cannot be recorded in the card")
    if args.at_recall is not None and not 0.5 <= args.at_recall <= 1.0:
        raise ValueError(f"--at-recall must lie between 0.5 and 1, got {args.at_recall}")
    if args.fold is not None and args.record:  # the card's figures are the whole model's
        raise ValueError("--fold measures one member on its own fold; it cannot be recorded in the card")
    block = sweep_model(
        loaded,
        limit=args.limit,
        progress=_progress("framing and stress", "condition"),
        at_recall=args.at_recall,
        fold=args.fold,
    )
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


def cmd_calibrate_probability(args: argparse.Namespace) -> int:
    from pneumo.evaluation.calibration import measure, record_in_card

    model = model_file(args.model)
    if not model.exists():  # not a folder holding model.keras, nor a model file: say so, not a path beside it
        raise ValueError(f"--model {args.model}: no model there")
    model_dir = model.parent
    if args.record:
        check_writable(card_path(model))  # a read-only card is refused before any work
        result = record_in_card(model_dir)
        print(f"recorded in {card_path(model)}", file=sys.stderr)
    else:
        from pneumo.evaluation.calibration import out_of_fold_frame

        result = measure(out_of_fold_frame(model_dir))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"Platt map a={result['a']:.4f} b={result['b']:.4f}, fitted on {result['fitted_on']}\n"
        f"calibration error out of fold: score {result['ece_score_oof']:.4f} -> probability {result['ece_oof']:.4f}\n"
        f"later period ({result['n_later_period']} films): score {result['ece_score_later_period']:.4f} -> "
        f"probability {result['ece_later_period']:.4f}\n({result['measured_on']})"
    )
    return 0


def cmd_input_check(args: argparse.Namespace) -> int:
    from pneumo.training.qualify import refit_input_check

    model = model_file(args.model)
    if not model.exists():
        raise ValueError(f"--model {args.model}: no model there")
    check_writable(card_path(model))  # a read-only card is refused before any work
    section = refit_input_check(model)
    print(f"recorded in {card_path(model)}", file=sys.stderr)
    if args.json:
        print(json.dumps(section, indent=2))
        return 0
    refused, warned = section["refused_share"], section["warned_share"]
    print(
        f"warning level {section['warning_distance']:.2f}, refusal level {section['refusal_distance']:.2f} "
        f"(fitted on {section['fitted_on']})\n"
        f"real films ({section['calibration_images']}, not used to fit): "
        f"{section['false_alarm_rate_on_held_out']:.1%} refused, {section['warned_rate_on_held_out']:.1%} warned\n"
        + "\n".join(f"{case}: {refused[case]:.1%} refused, {warned[case]:.1%} warned" for case in refused)
    )
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
