"""Command line: python -m pneumo {train,ensemble,evaluate,predict,export,validate,summarize}."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence


def _bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

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
    from .train import TrainConfig, train

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
                from tqdm import tqdm

                bar = bars["bar"] = tqdm(total=record["batches"], desc=f"epoch {record['epoch']}/{record['epochs']}",
                                         unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True)
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
    print(json.dumps({"run": str(args.out), "threshold": card.threshold, "validation": card.validation,
                      "stress_worst": card.shift_checks.get("stress", {}).get("worst_auc")}, indent=2))
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from .train import ensemble

    card = ensemble(args.runs, args.out, args.target_recall, overwrite=args.overwrite)
    print(json.dumps({"model": str(Path(args.out) / "model.keras"), "threshold": card.threshold,
                      "validation": card.validation}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine import export_onnx
    from .models import DEFAULT_MODEL_PATH, LoadedModel, load_keras_model, read_card

    path = Path(args.model) if args.model else DEFAULT_MODEL_PATH
    path = path / "model.keras" if path.is_dir() else path
    loaded = LoadedModel(load_keras_model(path), read_card(path), path)
    print(f"written {export_onnx(loaded.model, path, loaded.gradcam_layer)}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_data
    from .runs import atomic_write_json

    report = evaluate_data(args.model, args.data, args.threshold, args.split, progress=_progress("evaluate"))
    atomic_write_json(args.out, report)
    if args.record:
        from .evaluate import record_evaluation

        card = record_evaluation(report, args.record)
        print(f"recorded '{args.record}' in {card}", file=sys.stderr)
    keys = ("n", "roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold")
    print("  ".join(f"{k} {report[k]:.4f}" if isinstance(report[k], float) else f"{k} {report[k]}" for k in keys))
    print(f"report written to {args.out}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .card import check_threshold
    from .models import load_model
    from .predict import read

    loaded = load_model(args.model)
    if args.threshold is not None:
        loaded.card.threshold = check_threshold(args.threshold, "--threshold")
    results = []
    cam_names: set[str] = set()
    for path in args.paths:
        reading = read(loaded, path)
        entry: dict[str, Any] = {"path": path, "probability": reading.probability, "prediction": reading.decision,
                                 "threshold": loaded.threshold, "warnings": reading.warnings,
                                 "error": f"{reading.name}: {reading.error}" if reading.error else None}
        if args.cam and reading.xray is not None:
            stem, n = Path(path).stem, 1
            while f"{stem}_gradcam.png" in cam_names:  # two inputs with one stem never share a file
                n += 1
                stem = f"{Path(path).stem}-{n}"
            cam_names.add(f"{stem}_gradcam.png")
            from .explain import explain_to_png  # Grad-CAM needs TensorFlow; plain predictions do not

            entry["cam"] = str(explain_to_png(loaded, reading.xray.pixels, Path(args.cam) / f"{stem}_gradcam.png"))
        results.append(entry)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["error"]:
                print(f"{r['path']}: ERROR {r['error']}")
            else:
                print(f"{r['path']}: {r['prediction']}  p={r['probability']:.4f}  (threshold {r['threshold']:.4f})"
                      + "".join(f"\n  warning: {w}" for w in r["warnings"]))
    return 2 if any(r["error"] for r in results) else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import compare

    rows, recipes = compare(args.runs)
    if args.json:
        print(json.dumps({"runs": rows.to_dict("records"), "recipes": recipes.to_dict("records")}, indent=2, default=str))
    else:
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print()
        print(recipes.T.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from .data import summarize

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
    from .train import TrainConfig, field_choices

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
    parser = argparse.ArgumentParser(prog="pneumo", description="Chest X-ray pneumonia screening: train, evaluate, predict, explain.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a run directory")
    if train_flags:
        add_config_flags(p)
    p.add_argument("--config", help="a config.json to start from (flags override it)")
    p.add_argument("--out", required=True, help="run directory to create (must be new, empty, or prepared by the app)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an ended (finished, failed or stopped) pneumo run in --out; other files are never touched")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ensemble", help="average several runs (one validation split) into one model")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--target-recall", dest="target_recall", type=float, default=0.98)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier ensemble in --out")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("evaluate", help="metrics of a model on a labelled folder")
    p.add_argument("--model", help="path to a .keras model (default: the shipped model)")
    p.add_argument("--data", required=True)
    p.add_argument("--threshold", type=float, help="default: the operating threshold in the model card")
    p.add_argument("--split", help="only this split (train/val/test) of a split-folder layout")
    p.add_argument("--out", required=True, help="report JSON path")
    p.add_argument("--record", metavar="NAME",
                   help="append this evaluation (name, file-list hash, date, n, figures) to the model card's external evaluations")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="probability of pneumonia for image files")
    p.add_argument("--model")
    p.add_argument("--threshold", type=float)
    p.add_argument("--cam", help="write a Grad-CAM overlay PNG per image into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write model.onnx beside a model, so ONNX Runtime serves it (faster on a CPU)")
    p.add_argument("model", nargs="?", help="a .keras model or its folder (default: the shipped model)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("validate", help="compare runs on their shift checks (held-out split, stress suite, seeds)")
    p.add_argument("runs", nargs="+", help="run directories trained with this version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("summarize", help="dataset summary")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summarize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .data import DatasetError

    from . import import_tensorflow_quietly

    words = sys.argv[1:] if argv is None else list(argv)
    if set(words) & {"train", "ensemble", "export"}:
        import_tensorflow_quietly()  # before the parser: train's flags come from the model registry
    args = build_parser(train_flags="train" in words).parse_args(argv)
    try:
        return int(args.func(args))
    except (DatasetError, ValueError, OSError, TypeError, KeyError) as exc:
        # User errors (bad data, card, model, folder, arguments): one line, never a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
