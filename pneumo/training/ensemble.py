"""Ensembles: one model averaging the probabilities of runs trained on one held-out split, checked and carded
like a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from pneumo.core import files
from pneumo.core.card import ModelCard
from pneumo.model.loading import common_framing, load_model
from pneumo.training import runs
from pneumo.training.callbacks import save_model
from pneumo.training.config import library_versions
from pneumo.training.data import LEAKAGE_FILE
from pneumo.training.qualify import finish_run


def ensemble(
    run_dirs: list[str | Path], out_dir: str | Path, target_recall: float = 0.98, overwrite: bool = False
) -> ModelCard:
    """Average the probabilities of several runs trained on one validation split into one model.

    The members must share their validation images (same data and split), so the ensemble's threshold
    and checks still come from images none of its members trained on. out_dir is claimed like a run
    folder (new, or an ended run replaced with overwrite=True).
    """
    members = [Path(r) for r in run_dirs]
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two runs")
    if Path(out_dir).resolve() in {r.resolve() for r in members}:
        raise ValueError(f"{out_dir}: the ensemble cannot be written into one of its members")
    for r in members:  # checked before the output folder is claimed: a refused request creates nothing
        for name in ("model.keras", "val_predictions.csv"):
            if not (r / name).is_file():
                raise ValueError(f"{r}: not a finished run (no {name})")
    framing = common_framing([r / "model.keras" for r in members])
    with runs.claim(out_dir, overwrite) as out:
        runs.write_status(out, "running", pid=os.getpid(), started=files.now_iso(), heartbeat=files.now_iso())
        card = _ensemble(members, out, target_recall, framing)
        runs.write_status(out, "finished", ended=files.now_iso())
    return card


def average_model(networks: list[Any]) -> Any:
    """One Keras model whose output is the mean probability of `networks` (same input size), each
    nested under the name member1, member2, … in the order given."""
    sizes = {int(n.input_shape[1]) for n in networks}
    if len(sizes) != 1:
        raise ValueError(f"members have different input sizes {sorted(sizes)}")
    size = sizes.pop()
    inp = keras.Input((size, size, 1), name="xray")
    outputs = []
    for i, network in enumerate(networks):
        network.name = f"member{i + 1}"  # nested models need distinct names
        outputs.append(network(inp))
    return keras.Model(inp, keras.layers.Average(name="mean_probability")(outputs), name="ensemble")


def _ensemble(run_dirs: list[Path], out_dir: Path, target_recall: float, framing: str) -> ModelCard:
    members = [load_model(r / "model.keras") for r in run_dirs]
    vals = [pd.read_csv(r / "val_predictions.csv") for r in run_dirs]
    if any(set(v["path"]) != set(vals[0]["path"]) for v in vals[1:]):
        raise ValueError(
            "the runs do not share one validation split; train them with the same --split and --split-seed"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(average_model([m.model for m in members]), out_dir / "model.keras")
    # Members share one split, so any member's record of its images is the ensemble's.
    hashes = next((h for h in (files.read_json(r / LEAKAGE_FILE) for r in run_dirs) if h), None)
    if hashes:
        files.atomic_write_json(out_dir / LEAKAGE_FILE, hashes)
    histories = {r.name: files.read_json(r / "history.json", []) for r in run_dirs}
    files.atomic_write_json(out_dir / "history.json", histories)
    cards = [m.card for m in members]
    first = cards[0]
    configs = [c.training.get("config") or c.extra.get("config") or {} for c in cards]
    recipes = [
        f"{c.architecture} ({cfg.get('augmentation', 'basic' if cfg.get('augment') else 'none')} augmentation, "
        f"seed {cfg.get('seed')})"
        for c, cfg in zip(cards, configs)
    ]
    averaged = load_model(out_dir / "model.keras")
    # The checks below must frame the films as the members learned them; finish_run writes it into the card.
    averaged.card.extra["framing"] = framing
    return finish_run(
        out_dir,
        averaged,
        vals[0][["path", "label", "patient_id"]],
        target_recall,
        architecture=f"ensemble of {len(members)} × {first.architecture}"
        if len({c.architecture for c in cards}) == 1
        else "ensemble of " + " + ".join(c.architecture for c in cards),
        description=f"Mean probability of {len(members)} models trained on one held-out split: "
        + "; ".join(recipes)
        + ".",
        preprocessing=first.preprocessing,
        gradcam_layer=first.gradcam_layer,
        training_data=first.training_data,
        validation_kind=str(
            first.validation.get("kind") or files.read_json(run_dirs[0] / "config.json", {}).get("split") or "patient"
        ),
        training={
            "members": [
                {"run": r.name, "recipe": recipe, "val_roc_auc": c.validation.get("roc_auc")}
                for r, c, recipe in zip(run_dirs, cards, recipes)
            ],
            "seconds": round(sum(c.training.get("seconds", c.extra.get("training_seconds", 0.0)) for c in cards), 1),
            "device": first.training.get("device"),
            "library_versions": library_versions(),
            "config": configs[0],
            "command": " && ".join(c.training.get("command", "") for c in cards)
            + f" && python -m pneumo ensemble {' '.join(str(r) for r in run_dirs)} --out {out_dir}",
            "gradcam_note": "Grad-CAM is taken on the first member's feature map.",
        },
        attribution=first.data_attribution,
    )
