"""Commands that look at a collection or a batch: audit-labels, audit-shortcuts, drift, drift-reference,
summarize, docs."""

from __future__ import annotations

import argparse
import json
import sys

from pneumo.cli.common import _decision_line, _progress
from pneumo.data.collection import summarize
from pneumo.evaluation.audit import audit_folder, review_path, summary
from pneumo.evaluation.card_figures import by_label_in_words
from pneumo.evaluation.drift import check_paths, expand
from pneumo.evaluation.drift_reference import build
from pneumo.integrations import docs
from pneumo.model.loading import load_model, model_file, read_card


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
        f"{by_label_in_words(info['suspects_by_label'])}"
    )
    for r in suspects.itertuples():
        print(f"{r.score:.4f}  label {int(r.label)}  p={r.probability:.4f}  {r.source:<11}  {r.path}")
    print(
        f"verdicts (keep, relabel, exclude) go in {review_path(args.data)}; train --label-review applies them",
        file=sys.stderr,
    )
    return 0


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


def cmd_summarize(args: argparse.Namespace) -> int:
    # Links followed: the command line runs as the machine's user, on a folder that user named (the app, serving
    # others, follows only those inside its roots; see pneumo.data.collection.scan). How many is said below.
    summary = summarize(args.data, progress=_progress("summarize"), follow_links=True)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    d = summary.to_dict()
    print(f"{d['root']}  ({d['layout']}, {d['n_images']} images, {d['n_readable']} readable)\n")
    print(summary.counts.to_string())
    if d["class_weights"]:
        print(
            f"\nimbalance ratio      {d['imbalance_ratio']}  (class weights {d['class_weights']}, "
            f"from the {d['n_readable']} readable films)"
        )
    else:  # no readable film (or none of either class): weights from nothing are not weights
        print(f"\nimbalance ratio      n/a  (class weights not computed: {d['n_readable']} readable films)")
    print(f"patients per class   {d['patients_per_class']}")
    print(f"images per patient   mean {d['images_per_patient']['mean']}, max {d['images_per_patient']['max']}")
    print(f"subtypes             {d['subtypes']}")
    print(f"duplicate groups     {len(d['duplicate_groups'])}")
    print(f"image size           {d['image_size']}")
    print(f"unreadable           {len(d['unreadable'])}")
    for u in d["unreadable"][:20]:
        print(f"  {u['path']}: {u['reason']}")
    for line in summary.links.lines():
        print(f"links                {line}")
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
