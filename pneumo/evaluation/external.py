"""Evaluating a model on a labelled collection (python -m pneumo evaluate) and recording the result in
its card: the figures at the operating point in force, the batch's drift, the file list it was run on.

Above pneumo.evaluation.metrics (the metrics) in the import order: this module also needs the operating points
(pneumo.evaluation.site) and the drift check (pneumo.evaluation.drift), which themselves use those metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumo.core.card import ModelCard, check_threshold, update_card
from pneumo.core.files import check_writable, now_iso
from pneumo.data.collection import file_list_hash, scan
from pneumo.evaluation import drift
from pneumo.evaluation.metrics import Progress, metrics_at, predict_frame
from pneumo.evaluation.site import apply_operating_point
from pneumo.model.loading import card_path, load_model


def evaluate_data(
    model_path: str | Path | None,
    data: str | Path,
    threshold: float | None = None,
    split: str | None = None,
    progress: Progress | None = None,
    operating_point: str | None = None,
    *,
    follow_links: bool = False,
    allowed_roots: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Evaluate a saved model on a labelled folder at a threshold (the card's, or the named site
    operating point's, when not given), with the drift check of the folder as a batch. follow_links and
    allowed_roots: which symbolic links to films are followed (pneumo.data.collection.scan); the report's
    ``links`` says how many were followed and refused, so n is never read without them."""
    if threshold is not None and operating_point:
        raise ValueError("give --threshold or --operating-point, not both")
    loaded = load_model(model_path)
    if operating_point:
        loaded = apply_operating_point(loaded, operating_point)
    dataset = scan(data, follow_links=follow_links, allowed_roots=allowed_roots)
    frame = dataset.frame
    if split:
        frame = frame[frame["split"] == split]
    predicted = predict_frame(loaded, frame, progress=progress)
    ok = predicted[predicted["probability"].notna()]
    if ok.empty:
        raise ValueError(f"{data}: no readable images to evaluate")
    t = loaded.threshold if threshold is None else check_threshold(threshold, "--threshold")
    report = metrics_at(ok["label"], ok["probability"], t)
    report.update(
        model=str(loaded.path),
        data=str(data),
        file_list_sha256_16=file_list_hash(frame),
        threshold_source="given" if threshold is not None else "model card",
        unreadable=[
            {"path": r.path, "error": r.error} for r in predicted[predicted["probability"].isna()].itertuples()
        ],
        links=dataset.links.to_dict(),
    )
    if loaded.operating_point != "shipped":
        report["threshold_source"] = f"site operating point '{loaded.operating_point}' in the model card"
    report.update(
        operating_point="--threshold" if threshold is not None else loaded.operating_point,
        drift=drift.report(loaded, ok["path"].tolist(), ok["probability"].to_numpy()),
    )
    return report


def record_evaluation(report: dict[str, Any], name: str) -> Path:
    """Append an evaluation report to its model's card (external evaluations); returns the card's path.
    Read, changed and written under the card's lock (update_card): no concurrent update of the card is lost."""
    path = card_path(Path(report["model"]))
    check_writable(path)  # a read-only card is refused (ReadOnlyError), never silently replaced
    keys = (
        "n",
        "threshold",
        "roc_auc",
        "pr_auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "npv",
        "f1",
        "confusion",
    )
    entry = {
        "name": name,
        "data": report["data"],
        "file_list_sha256_16": report["file_list_sha256_16"],
        "date": now_iso(),
        "threshold_source": report["threshold_source"],
        **{k: report[k] for k in keys},
    }

    def append(card: ModelCard) -> None:
        card.external_evaluations.append(entry)

    update_card(path, append)  # validated, size-bounded; the default card when there is none
    return path
