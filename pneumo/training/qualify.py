"""Qualify a trained model on its held-out films: threshold, stress and bootstrap checks, the serving export,
the wrong-input check, and the card that records them (for single runs, ensembles and cross-fits alike)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core import files
from pneumo.core.card import ModelCard
from pneumo.data.anatomy import input_description
from pneumo.model import input_check as quality
from pneumo.model.serving import ExportError, export_onnx, open_onnx

# pneumo.evaluation.metrics, pneumo.evaluation.validate and pneumo.model.explain (scikit-learn, OpenCV) are imported
# where used: the CLI
# imports this module at start, through pneumo.training.job.


def finish_run(
    run_dir: Path,
    loaded: Any,
    val_df: Any,
    target_recall: float,
    *,
    architecture: str,
    description: str,
    preprocessing: str,
    gradcam_layer: str | None,
    training_data: dict[str, Any],
    validation_kind: str,
    training: dict[str, Any],
    attribution: str,
    progress: Callable[[int, int], None] | None = None,
) -> ModelCard:
    """Check a trained model on its held-out images and write val_predictions.csv, checks.json and its
    card: the one place a card is built, for single runs and ensembles alike."""
    from pneumo.data import transforms
    from pneumo.evaluation import validate as V

    loaded.card.gradcam_layer = gradcam_layer  # the card is written below; the checks need its layer now
    serving = export_for_serving(loaded)  # before the checks, so they measure the engine that will serve
    images = V.load_images(val_df["path"].tolist(), loaded.input_size)
    checks = shift_checks(loaded, val_df, images, target_recall, progress=progress)
    predicted = val_df.assign(probability=checks.pop("clean_probabilities"))
    predicted[["path", "label", "probability", "patient_id"]].to_csv(run_dir / "val_predictions.csv", index=False)
    files.atomic_write_json(run_dir / "checks.json", checks)
    if progress:
        progress(len(transforms.STRESS) + 1, len(transforms.STRESS) + 2)  # a heartbeat between the stages
    input_check = fit_input_check(loaded, images, run_dir)
    card = ModelCard(
        name=run_dir.name,
        architecture=architecture,
        threshold=checks["threshold"],
        threshold_rule=checks["threshold_rule"],
        input_size=loaded.input_size,
        gradcam_layer=gradcam_layer,
        description=description,
        preprocessing=preprocessing,
        parameters=int(loaded.model.count_params()),
        training_data=training_data,
        validation={
            "kind": validation_kind,
            "split": training_data.get("split", ""),
            "predictions": "val_predictions.csv",
            **checks["clean"],
        },
        shift_checks={"stress": checks["stress"], "bootstrap_95": checks["bootstrap_95"], "framing": checks["framing"]},
        training=training,
        data_attribution=attribution,
        created=files.now_iso(),
        extra={
            "input_check": input_check,
            "serving": serving,
            "framing": loaded.framing,
            "explanation": checks["explanation"],
            "explanation_anatomy": checks["explanation_anatomy"],
            "input": input_description(loaded.framing),
            "output": "sigmoid probability of PNEUMONIA",
        },
    )
    card.write(run_dir / "card.json")
    return card


def export_for_serving(loaded: Any) -> dict[str, Any]:
    """Export model.onnx beside the saved model and serve it from there; TensorFlow when export fails."""
    from pneumo.model.explain import cam_functions

    try:
        layer = loaded.gradcam_layer
        export_onnx(loaded.model, loaded.path, layer, cam_functions(loaded.model, layer) if layer else None)
    except ExportError as exc:
        return {"engine": loaded.engine_name, "onnx_export": str(exc)}
    loaded.engine = open_onnx(loaded.path)
    return {"engine": loaded.engine_name, "onnx_export": "model.onnx"}


def fit_input_check(loaded: Any, images: np.ndarray, run_dir: Path) -> dict[str, Any]:
    """Fit the wrong-input check on the held-out films (density, warning and refusal levels, orientation
    classifier), save it beside the model, and return the card's section for it."""

    def features_of(batch: list[np.ndarray] | np.ndarray) -> np.ndarray:
        return quality.features(loaded, batch)

    try:
        density = quality.fit(features_of(images), images=images, features_of=features_of)
    except ValueError as exc:
        return {"available": False, "reason": str(exc)}
    density.save(run_dir / quality.FILE_NAME)
    return input_check_section(density, quality.detection_rates(loaded, images, density))


def input_check_section(density: quality.FeatureDensity, rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The card's record of a fitted input check: its levels, and what it does to held-out films and wrong inputs."""
    return {
        "available": True,
        "warning_distance": density.alarm,
        "refusal_distance": density.refusal_level,
        "refusal_rule": f"{quality.REFUSAL_FACTOR:g} × the warning level (the calibration films' "
        f"{quality.ALARM_QUANTILE:g}th percentile); inverted or turned films refused by the orientation classifier",
        # The monitor compares the share of readings refused with this figure: the share of real films refused.
        "false_alarm_rate_on_held_out": density.refusal_rate,
        "warned_rate_on_held_out": density.false_alarm_rate,
        "measured_on": "the calibration half of the held-out films, used to fit neither the density nor the "
        "orientation classifier",
        "fit_images": density.n_fit,
        "calibration_images": density.n_calibrate,
        "orientation_classifier": density.orientation is not None,
        "refused_share": rates["refused"],
        "warned_share": rates["warned"],
        "shares_note": "of up to 200 held-out films (both halves) as they are and once inverted or turned, and of "
        "up to 50 noise images; warned: decided, with a warning",
    }


def refit_input_check(model_path: str | Path | None = None) -> dict[str, Any]:
    """Fit a saved model's input check again on the films it was checked on, save it beside the model and
    record it in its card (under the card's lock). The films: fold 1's out-of-fold films for a cross-fitted
    ensemble (its features are its first member's, which never saw them), else the validation predictions'.
    A check file written before the refusal level and the orientation classifier gains both."""
    from pneumo.core.card import update_card
    from pneumo.evaluation import validate as V
    from pneumo.evaluation.drift_reference import predictions_for_reference
    from pneumo.model.loading import card_path, load_model

    loaded = load_model(model_path)
    card = card_path(loaded.path)
    files.check_writable(card)  # a read-only card is refused before the work
    files.check_writable(loaded.path.with_name(quality.FILE_NAME))
    frame, what = predictions_for_reference(loaded.path)
    images = V.load_images(frame["path"].tolist(), loaded.input_size)
    check_file = loaded.path.with_name(quality.FILE_NAME)
    before = check_file.read_bytes() if check_file.is_file() else None
    section = fit_input_check(loaded, images, loaded.path.parent)
    if not section["available"]:
        raise ValueError(f"{loaded.path}: {section['reason']}")
    section["fitted_on"] = what

    def put(changed: ModelCard) -> None:
        changed.extra["input_check"] = section

    try:
        update_card(card, put, create=False)
    except BaseException:
        # The card could not take the new levels (its lock held too long, made read-only meanwhile): the check
        # file goes back to what it was, so the check in force and the card that describes it never disagree.
        if before is None:
            check_file.unlink(missing_ok=True)
        else:
            files.atomic_write_bytes(check_file, before)
        raise
    return section


def shift_checks(
    loaded: Any,
    val_df: Any,
    images: np.ndarray,
    target_recall: float,
    explain_limit: int = 48,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Threshold, clean figures, stress suite, bootstrap spread and explanation trust on held-out images.

    The threshold is the highest one that keeps `target_recall` pooled over the clean held-out films and
    every stressed copy of them, so that it still holds under acquisition shift.
    """
    from pneumo.data import transforms
    from pneumo.evaluation import framing as F
    from pneumo.evaluation import metrics as E
    from pneumo.evaluation import validate as V

    labels = val_df["label"].to_numpy()
    probs = V.stressed_probabilities(loaded, images, progress=progress)
    threshold = V.robust_threshold(labels, probs, target_recall)
    stress = V.stress_report(labels, probs, threshold)
    framed = F.probabilities(lambda batch, rows: loaded.predict(batch, batch_size=64), images, F.sweep_conditions())
    how = (
        f"the run's {len(labels)} held-out films ({int(labels.sum())} pneumonia); figures at threshold "
        f"{threshold:.4f} with patient-bootstrap 95 % intervals"
    )
    groups = val_df["patient_id"].astype(str).to_numpy()
    # One set of Grad-CAM maps serves both explanation figures (faithfulness and where the maps fall).
    explanation, anatomy = V.explanation_checks(loaded, images, threshold, limit=explain_limit)
    return {
        "framing": V.decision_block(labels, groups, {**framed, **probs}, threshold, how),
        "threshold": threshold,
        "threshold_rule": f"highest threshold with sensitivity >= {target_recall} pooled over the held-out images "
        f"and {len(transforms.STRESS)} stressed copies of them",
        "clean": E.metrics_at(labels, probs["clean"], threshold),
        "clean_probabilities": probs["clean"].tolist(),
        "bootstrap_95": V.bootstrap(labels, probs["clean"], val_df["patient_id"].to_numpy(), threshold),
        "stress": {k: v for k, v in stress.to_dict().items() if k != "probabilities"},
        "explanation": explanation,
        "explanation_anatomy": anatomy,
    }
