"""The Train form's fields (pneumo.training.form), each as TrainConfig describes it."""

from __future__ import annotations

from pneumo.model.architectures import ARCHITECTURES
from pneumo.training.form import form_fields


def test_each_form_field_is_typed_bounded_and_labelled_by_its_config_field() -> None:
    by_name = {f.name: f for f in form_fields()}
    # Left to the sidebar (the data folder) and the command line.
    assert not {"data", "split_seed", "mixed_precision", "notes", "label_review"} & set(by_name)
    assert list(by_name)[:3] == ["model", "image_size", "epochs"]  # TrainConfig's order
    epochs = by_name["epochs"]
    assert (epochs.label, epochs.kind, epochs.default, epochs.minimum, epochs.maximum) == ("Epochs", "int", 40, 1, 1000)
    assert epochs.number_format == "%d" and epochs.help == "passes over the training images"
    rate = by_name["learning_rate"]
    assert (rate.label, rate.kind, rate.minimum, rate.maximum, rate.number_format) == (
        "Learning rate",
        "float",
        1e-7,
        1.0,
        "%.5g",
    )
    assert by_name["seed"].maximum is None and by_name["seed"].minimum == 0
    split = by_name["split"]
    assert (split.kind, split.choices, split.default, split.index) == (
        "choice",
        ("patient", "fold", "temporal", "family"),
        "temporal",
        2,
    )
    assert by_name["model"].choices == tuple(ARCHITECTURES) and by_name["model"].default == "shift_cnn"
    flag = by_name["class_weighting"]
    assert (flag.label, flag.kind, flag.default) == ("Class weighting", "flag", True)
