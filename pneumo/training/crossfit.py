"""Cross-fitted ensembles: K models, one per fold, whose held-out parts partition the training films.

Every film gets a probability from the fold model that never saw it (out of fold, `oof_predictions.csv`),
and the shipped model is the mean of the K fold models, so every film also trains it. What the card
says of the operating point is measured on those out-of-fold probabilities: 5,216 films rather than one
held-out slice, with populations (file-name series, patient-number bands) that can be looked at apart.

The operating threshold is chosen where label noise cannot drag it down: the target recall is asked of
the positives the label audit trusts (see pneumo.evaluation.audit), never of films whose "pneumonia" label their
own out-of-fold score contradicts, and the threshold lies midway between two films' scores, never on
one film's exact score (a serving engine that rounds differently must not flip that film).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core import files
from pneumo.core.card import ModelCard
from pneumo.core.paths import PROJECT_ROOT
from pneumo.data.anatomy import input_description
from pneumo.data.collection import parse_name
from pneumo.data.splits import patient_number, series
from pneumo.evaluation import audit
from pneumo.evaluation.framing import children
from pneumo.evaluation.metrics import metrics_at
from pneumo.evaluation.validate import (
    bootstrap,
    decision_checks,
    explanation_checks,
    load_images,
)
from pneumo.model.loading import OOF_FILE, common_framing, load_model
from pneumo.training import runs
from pneumo.training.config import WRITTEN_BEFORE
from pneumo.training.qualify import export_for_serving

# pneumo.training.job's helpers are imported where used: they are lazy re-exports that load TensorFlow.
OOF_COLUMNS = ["path", "label", "fold", "probability", "patient_id"]
# Films the framing sweep and the stress suite score out of fold, by patient: 30 conditions each, about 3 minutes
# on 2 CPU cores at 1,500 films; the intervals say what the sample size allows.
FRAMING_FILMS = 1500


def is_fold_run(run_dir: str | Path) -> bool:
    config = files.read_json(Path(run_dir) / "config.json")
    return isinstance(config, dict) and config.get("split") == "fold"


def fold_runs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The fold runs in fold order, checked to be one partition: same data, folds and split seed, each
    fold once, every film held out exactly once."""
    dirs = [Path(r) for r in run_dirs]
    configs = {}
    for d in dirs:
        config = files.read_json(d / "config.json")
        if not isinstance(config, dict) or config.get("split") != "fold":
            raise ValueError(f"{d}: not a fold run (train it with --split fold --fold K)")
        bad = [k for k in ("folds", "fold") if isinstance(config.get(k), bool) or not isinstance(config.get(k), int)]
        if bad:
            raise ValueError(f"{d / 'config.json'}: {', '.join(bad)} must be a whole number (damaged config)")
        configs[d] = config
    keys = {
        (
            str(Path(str(c.get("data"))).resolve()),
            c.get("folds"),
            c.get("split_seed") if c.get("split_seed") is not None else c.get("seed"),
            c.get("max_images"),
        )
        for c in configs.values()
    }
    if len(keys) != 1:
        raise ValueError(
            "the fold runs differ in data, number of folds or split seed; train them with the same "
            "--data, --folds and --split-seed"
        )
    folds = int(next(iter(configs.values()))["folds"])
    order = sorted(dirs, key=lambda d: int(configs[d]["fold"]))
    got = [int(configs[d]["fold"]) for d in order]
    if got != list(range(folds)):
        raise ValueError(f"need one run for each of the {folds} folds; got folds {got}")
    return order


def oof_predictions(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Each fold run's held-out predictions stacked: one row per training film (path, label, fold,
    probability, patient_id)."""
    parts = []
    for k, d in enumerate(fold_runs(run_dirs)):
        part = pd.read_csv(d / "val_predictions.csv")
        parts.append(part.assign(fold=k)[OOF_COLUMNS])
    oof = pd.concat(parts, ignore_index=True)
    oof["path"] = [_portable(p) for p in oof["path"]]
    repeated = oof["path"][oof["path"].duplicated()]
    if len(repeated):
        raise ValueError(f"{len(repeated)} films are held out by two folds (first: {repeated.iloc[0]})")
    return oof


def _portable(path: str) -> str:
    """A film's path relative to the project when it lies beside it (../shared/… in a checkout), so the
    stored predictions resolve on any machine with the same layout; absolute otherwise."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(PROJECT_ROOT.parent):
        return os.path.relpath(resolved, PROJECT_ROOT)
    return str(resolved)


def recall_threshold(scores: np.ndarray, target: float, others: np.ndarray | None = None) -> float:
    """The highest threshold at which at least `target` of these positive scores stay at or above it.

    Any threshold between the last positive kept and the next one below it gives the same recall; it
    is placed in the middle of the widest gap between films' scores there (`others`: the other films'
    scores, e.g. the normals'), so no film sits within rounding of it.
    """
    s = np.sort(np.asarray(scores, dtype=float))[::-1]
    if len(s) == 0:
        raise ValueError("no positive films to set a recall threshold on")
    keep = min(len(s), max(1, math.ceil(target * len(s) - 1e-9)))
    high, low = s[keep - 1], (s[keep] if keep < len(s) else 0.0)
    inside = np.asarray(others if others is not None else [], dtype=float)
    edges = np.unique(np.r_[low, high, inside[(inside > low) & (inside < high)]])
    if len(edges) < 2:
        return float(high)  # ties at the boundary: the threshold keeps them all
    widest = int(np.argmax(np.diff(edges)))
    return float((edges[widest] + edges[widest + 1]) / 2.0)


def operating_point(
    labels: np.ndarray,
    probabilities: np.ndarray,
    trusted: np.ndarray,
    groups: np.ndarray,
    target: float,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The threshold for `target` recall on the trusted positives, with patient-bootstrap 95 % intervals
    of the threshold itself and of the figures at it."""
    y, p, ok = np.asarray(labels, int), np.asarray(probabilities, float), np.asarray(trusted, bool)
    threshold = recall_threshold(p[(y == 1) & ok], target, p[~((y == 1) & ok)])
    members = children(groups)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"threshold": [], "sensitivity_trusted": [], "sensitivity": [], "specificity": []}
    for _ in range(rounds):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        yy, pp, tt = y[idx], p[idx], ok[idx]
        if not ((yy == 1) & tt).any() or not (yy == 0).any():
            continue
        draws["threshold"].append(recall_threshold(pp[(yy == 1) & tt], target))
        draws["sensitivity_trusted"].append(float((pp[(yy == 1) & tt] >= threshold).mean()))
        draws["sensitivity"].append(float((pp[yy == 1] >= threshold).mean()))
        draws["specificity"].append(float((pp[yy == 0] < threshold).mean()))
    interval = {
        k: {"low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5))} for k, v in draws.items()
    }
    return {
        "threshold": threshold,
        "target_recall": target,
        "sensitivity_trusted": float((p[(y == 1) & ok] >= threshold).mean()),
        "trusted_positives": int(((y == 1) & ok).sum()),
        "all_positives": int((y == 1).sum()),
        "bootstrap_95": interval,
        "bootstrap_rounds": rounds,
    }


def populations(frame: pd.DataFrame, threshold: float, bands: int = 5) -> dict[str, Any]:
    """Figures per file-name population of the films (series and subtype) and per band of patient
    numbers within each series, ordered by the number as written: how far the operating point moves
    between groups of children."""
    f = frame.assign(
        series=[series(p) for p in frame["path"]],
        subtype=[parse_name(p)[1] for p in frame["path"]],
        number=pd.array([patient_number(pid) for pid in frame["patient_id"]], dtype="Int64"),
    )
    positives = f[f["label"] == 1]
    out: dict[str, Any] = {"by_population": [], "by_band": []}
    groups = [(f"{s} normals", f[(f["series"] == s) & (f["label"] == 0)]) for s in ("IM", "NORMAL2-IM")]
    groups += [(f"{t} pneumonia", f[(f["subtype"] == t) & (f["label"] == 1)]) for t in ("bacterial", "viral")]
    for name, part in groups:
        if part.empty:
            continue
        row = {"population": name, "n": int(len(part))}
        if part["label"].iloc[0] == 0:
            row["specificity"] = float((part["probability"] < threshold).mean())
            both = pd.concat([part, positives])
            row["roc_auc_vs_all_pneumonia"] = metrics_at(both["label"], both["probability"], threshold)["roc_auc"]
        else:
            row["sensitivity"] = float((part["probability"] >= threshold).mean())
        out["by_population"].append(row)
    for (s, label), part in f[f["number"].notna()].groupby(["series", "label"]):
        part = part.sort_values("number", kind="stable")
        for b, rows in enumerate(np.array_split(np.arange(len(part)), bands)):
            if not len(rows):
                continue
            chunk = part.iloc[rows]
            figure = "specificity" if label == 0 else "sensitivity"
            value = (
                (chunk["probability"] < threshold).mean() if label == 0 else (chunk["probability"] >= threshold).mean()
            )
            out["by_band"].append(
                {
                    "series": s,
                    "label": int(label),
                    "band": b + 1,
                    "numbers": f"{int(chunk['number'].min())}–{int(chunk['number'].max())}",
                    "n": int(len(chunk)),
                    figure: float(value),
                }
            )
    for figure in ("specificity", "sensitivity"):
        values = [r[figure] for r in out["by_band"] if figure in r]
        if values:
            out[f"band_{figure}_range"] = [float(min(values)), float(max(values))]
    return out


def held_out_run_figures(run_dir: Path, threshold: float) -> dict[str, Any]:
    """A leave-population-out run (e.g. --split family) at the ensemble's threshold: one network of the
    ensemble's recipe that never saw the held-out population, scored on it."""
    preds = pd.read_csv(run_dir / "val_predictions.csv")
    config = files.read_json(run_dir / "config.json", {}) or {}
    m = metrics_at(preds["label"], preds["probability"], threshold)
    return {
        "run": run_dir.name,
        "split": config.get("split"),
        "held_out": (files.read_json(run_dir / "data_summary.json", {}) or {}).get("split", ""),
        "recipe": {k: config.get(k) for k in RECIPE_KEYS},
        **{k: m[k] for k in ("n", "roc_auc", "sensitivity", "specificity", "accuracy")},
    }


RECIPE_KEYS = ("model", "augmentation", "framing", "epochs", "image_size")


def population_run_figures(model_dir: str | Path, run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Leave-population-out runs reported at a built ensemble's threshold (held_out_run_figures).

    A run of another recipe than the ensemble's members says nothing of how the shipped recipe transfers: refused,
    as is a run that is not a finished leave-population-out run (ValueError, one line)."""
    card = ModelCard.read(Path(model_dir) / "card.json")
    want = {k: (card.training.get("config") or {}).get(k, WRITTEN_BEFORE.get(k)) for k in RECIPE_KEYS}
    rows = []
    for run in map(Path, run_dirs):
        config = files.read_json(run / "config.json", {}) or {}
        if not (run / "val_predictions.csv").is_file():
            raise ValueError(f"{run}: not a finished training run (no val_predictions.csv)")
        if config.get("split") not in ("family", "temporal"):
            raise ValueError(
                f"{run}: split '{config.get('split')}' holds out no population (train with --split family)"
            )
        got = {k: config.get(k, WRITTEN_BEFORE.get(k)) for k in RECIPE_KEYS}
        differ = {k: (got[k], want[k]) for k in RECIPE_KEYS if want[k] is not None and got[k] != want[k]}
        if differ:
            named = ", ".join(f"{k} {a} (the model's: {b})" for k, (a, b) in differ.items())
            raise ValueError(f"{run}: another recipe than the model's members: {named}")
        rows.append(held_out_run_figures(run, card.threshold))
    return rows


def record_population_runs(model_dir: str | Path, run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """population_run_figures, stored in the model's card (shift_checks.leave_population_out), replacing earlier
    rows of the same run names; a refused run writes nothing."""
    from pneumo.core.card import update_card

    rows = population_run_figures(model_dir, run_dirs)

    def change(c: ModelCard) -> None:
        names = {r["run"] for r in rows}
        kept = [r for r in c.shift_checks.get("leave_population_out", []) if r.get("run") not in names]
        c.shift_checks["leave_population_out"] = kept + rows

    update_card(Path(model_dir) / "card.json", change, create=False)
    return rows


def _stress_by_fold(fold_dirs: list[Path]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for d in fold_dirs:
        checks = files.read_json(d / "checks.json", {}) or {}
        stress = checks.get("stress") or {}
        if stress:
            rows.append(
                {
                    "fold": len(rows),
                    "mean_auc": stress.get("mean_auc"),
                    "worst_auc": (stress.get("worst_auc") or {}).get("roc_auc"),
                    "worst_condition": (stress.get("worst_auc") or {}).get("condition"),
                }
            )
    means = [r["mean_auc"] for r in rows if r["mean_auc"] is not None]
    worsts = [r["worst_auc"] for r in rows if r["worst_auc"] is not None]
    return {
        "folds": rows,
        "mean_auc": float(np.mean(means)) if means else None,
        "worst_auc": float(np.min(worsts)) if worsts else None,
        "note": "each fold model on its own held-out films under the 16 stress conditions (threshold-free AUC)",
    }


def member_faithfulness(fold_dirs: list[Path], threshold: float, limit: int = 96) -> dict[str, Any]:
    """The explanation figure of every member on its own held-out films (which it never saw), averaged."""
    tables, parts = [], []
    for k, d in enumerate(fold_dirs):
        member = load_model(d / "model.keras")
        held = pd.read_csv(d / "val_predictions.csv")
        images = load_images(held["path"].tolist(), member.input_size)
        # One set of Grad-CAM maps serves both figures (faithfulness and where the maps fall).
        figure, anatomy = explanation_checks(member, images, threshold, limit=limit, seed=k)
        tables.append(pd.DataFrame(figure["table"]).set_index("map"))
        parts.append(
            {
                "fold": k,
                "beats_average_map": figure["beats_average_map"],
                "n": figure["n"],
                "anatomy": anatomy["table"],
                "lung_field_found": anatomy["lung_field_found"],
            }
        )
    mean = sum(tables) / len(tables)
    return {
        "table": mean.round(4).reset_index().to_dict("records"),
        "members": parts,
        "beats_average_map": all(p["beats_average_map"] for p in parts),
        "how": figure["how"].replace(
            f"over {figure['n']} films",
            f"over {figure['n']} held-out films of each of the {len(tables)} members, averaged",
        ),
    }


def ensemble_folds(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    target_recall: float = 0.98,
    population_runs: list[str | Path] | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """The mean of the fold models, with its operating point and figures from the predictions out of fold."""
    folds = fold_runs(run_dirs)
    framing = common_framing([d / "model.keras" for d in folds])  # refused before the output folder is claimed
    pops = [Path(r) for r in population_runs or []]
    if Path(out_dir).resolve() in {r.resolve() for r in folds + pops}:
        raise ValueError(f"{out_dir}: the ensemble cannot be written into one of its members")
    with runs.claim(out_dir, overwrite) as out:
        runs.write_status(out, "running", pid=os.getpid(), started=files.now_iso(), heartbeat=files.now_iso())
        card = _ensemble_folds(folds, pops, out, target_recall, framing)
        runs.write_status(out, "finished", ended=files.now_iso())
    return card


def _ensemble_folds(folds: list[Path], pops: list[Path], out: Path, target_recall: float, framing: str) -> ModelCard:
    from pneumo.training.callbacks import save_model
    from pneumo.training.config import library_versions
    from pneumo.training.ensemble import average_model

    members = [load_model(d / "model.keras") for d in folds]
    save_model(average_model([m.model for m in members]), out / "model.keras")
    oof = oof_predictions(folds)
    audited = audit.audit(oof)
    oof = oof.merge(
        audited[["path", "score", "suspect"]].rename(columns={"score": "label_quality", "suspect": "label_suspect"}),
        on="path",
        how="left",
    )
    oof.to_csv(out / OOF_FILE, index=False)

    y, p = oof["label"].to_numpy(), oof["probability"].to_numpy()
    trusted = ~oof["label_suspect"].fillna(False).to_numpy(bool)
    groups = oof["patient_id"].astype(str).to_numpy()
    point = operating_point(y, p, trusted, groups, target_recall)
    t = point["threshold"]
    first = members[0].card
    rule = (
        f"midway between two out-of-fold scores, at sensitivity >= {target_recall} on the "
        f"{point['trusted_positives']} pneumonia films the label audit trusts (of {point['all_positives']}), "
        f"out of fold over {len(oof)} films ({len(folds)} folds by patient and duplicate group)"
    )
    clean = metrics_at(y, p, t)
    trusted_m = metrics_at(y[trusted], p[trusted], t)
    hashes = [files.read_json(d / "image_hashes.json", {}) or {} for d in folds]
    files.atomic_write_json(
        out / "image_hashes.json",
        {"train": sorted({h for x in hashes for h in x.get("train", []) + x.get("validation", [])}), "validation": []},
    )
    files.atomic_write_json(out / "history.json", {d.name: files.read_json(d / "history.json", []) for d in folds})
    # The input check reads the first member's pooled features: the density that member fitted on its own
    # held-out films (which it never trained on) is the ensemble's.
    if (folds[0] / "ood.npz").exists():
        shutil.copyfile(folds[0] / "ood.npz", out / "ood.npz")
    loaded = load_model(out / "model.keras")
    loaded.card.gradcam_layer = first.gradcam_layer
    loaded.card.extra["framing"] = framing  # the checks below frame films as the members learned
    serving = export_for_serving(loaded)
    configs = [m.card.training.get("config", {}) for m in members]
    card = ModelCard(
        name=out.name,
        architecture=f"cross-fitted ensemble of {len(folds)} × {first.architecture}",
        threshold=t,
        threshold_rule=rule,
        input_size=loaded.input_size,
        gradcam_layer=first.gradcam_layer,
        description=(
            f"Mean probability of {len(folds)} {first.architecture} networks, fold k's network trained on "
            "every training film outside fold k: every film trains the ensemble, and every film has a "
            "probability from a network that never saw it."
        ),
        preprocessing=first.preprocessing,
        parameters=int(loaded.model.count_params()),
        training_data={
            **first.training_data,
            "train_images": int(len(oof)),
            "val_images": 0,
            "split": f"{len(folds)} folds by patient and exact-duplicate group",
        },
        validation={
            "kind": "out-of-fold",
            "split": f"every training film, scored by the fold network that never saw it ({len(folds)} folds)",
            "predictions": OOF_FILE,
            "note": (
                "in-distribution: children of the same hospital and period as the training films. The served "
                "model averages the fold networks, so these are the figures of one network on unseen films."
            ),
            **clean,
            "trusted": {k: trusted_m[k] for k in ("n", "sensitivity", "specificity", "roc_auc")},
            "operating_point": point,
            "bootstrap_95": bootstrap(y, p, groups, t),
        },
        shift_checks={
            "populations": populations(oof, t),
            "leave_population_out": [held_out_run_figures(r, t) for r in pops],
            "stress": _stress_by_fold(folds),
            "framing": decision_checks(loaded, oof, t, limit=FRAMING_FILMS),
        },
        training={
            "members": [
                {
                    "run": d.name,
                    "fold": k,
                    "seed": c.get("seed"),
                    "recipe": f"{m.card.architecture} ({c.get('augmentation')} augmentation, "
                    + (f"{m.framing} framing, " if m.framing != "none" else "")
                    + f"{c.get('epochs')} epochs)",
                    "oof_roc_auc": m.card.validation.get("roc_auc"),
                    "seconds": m.card.training.get("seconds"),
                }
                for k, (d, m, c) in enumerate(zip(folds, members, configs))
            ],
            "seconds": round(sum(float(m.card.training.get("seconds") or 0) for m in members), 1),
            "device": first.training.get("device"),
            "library_versions": library_versions(),
            "config": configs[0],
            "command": " && ".join(m.card.training.get("command", "") for m in members)
            + f" && python -m pneumo ensemble {' '.join(str(d) for d in folds)} --out {out}",
            "gradcam_note": "Grad-CAM and the input check read the first member (fold 1).",
        },
        data_attribution=first.data_attribution,
        created=files.now_iso(),
        extra={
            "label_audit": audit.summary(audited),
            "explanation": member_faithfulness(folds, t),
            "input_check": {
                **(first.extra.get("input_check") or {}),
                "fitted_on": "fold 1's held-out films, by the first member (which never trained on them)",
            },
            "serving": serving,
            "framing": framing,
            "input": input_description(framing),
            "output": "sigmoid probability of PNEUMONIA (mean of the members)",
        },
    )
    card.write(out / "card.json")
    return card
