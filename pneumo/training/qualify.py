"""Qualify a trained model on its held-out films: threshold, stress and bootstrap checks, the serving export,
the wrong-input check, and the card that records them (for single runs, ensembles and cross-fits alike)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core import files
from pneumo.core.card import ModelCard
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
            "explanation": checks["explanation"],
            "explanation_anatomy": checks["explanation_anatomy"],
            "input": "single-channel grayscale, float32 in [0, 1], resized to input_size × input_size (area)",
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
    """Fit the wrong-input check on the held-out films' features and save it beside the model."""
    try:
        density = quality.fit(quality.features(loaded, images))
    except ValueError as exc:
        return {"available": False, "reason": str(exc)}
    density.save(run_dir / quality.FILE_NAME)
    return {
        "available": True,
        "alarm_distance": density.alarm,
        "false_alarm_rate_on_held_out": density.false_alarm_rate,
        "fit_images": density.n_fit,
        "calibration_images": density.n_calibrate,
        "warned_share": quality.detection_rates(loaded, images, density),
    }


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
