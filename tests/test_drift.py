"""The drift check: one-sided direction, prevalence, minimum n, storage, CLI contract, and its measured
false-alarm rate and power on the shared data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import ks_2samp

from pneumo.evaluation import drift, drift_reference
from tests.conftest import ROOT, SHARED_TRAIN, require

SAMPLES = ROOT / "data" / "samples"


def copy_model(dest: Path) -> Path:
    """The shipped model in a folder of its own (models/ is never written by the tests), with every file
    beside it (the ONNX export's probe, the input check, the leakage record)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (ROOT / "models").iterdir():
        # Without the shipped drift reference: each test builds (or leaves out) its own.
        if path.is_file() and path.suffix != ".md" and path.name != drift.REFERENCE_FILE:
            shutil.copy(path, dest / path.name)
    return dest


# ---------------------------------------------------------------------- synthetic features: the statistics


def synthetic_reference(rng: np.random.Generator, n: int = 2000, dim: int = 8, split: float = 0.5) -> drift.Reference:
    """Identity precision around 0; pneumonias (score >= split) lie farther out, as on the real model."""
    labels = rng.random(n) < 0.6
    feats = rng.standard_normal((n, dim)) * np.where(labels, 1.3, 1.0)[:, None]
    probs = np.where(labels, rng.beta(12, 1.2, n), rng.beta(1.2, 12, n))
    ref = drift.Reference(
        np.zeros(dim),
        np.eye(dim),
        np.zeros(0),
        probs,
        split,
        "model",
        "x" * 16,
        "synthetic films",
        0,
        0,
        "2025-01-01T00:00:00+00:00",
    )
    ref.distances = ref.distance(feats)
    return ref


def synthetic_batch(
    rng: np.random.Generator, n: int, dim: int = 8, scale: float = 1.0, prevalence: float = 0.6, confidence: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.random(n) < prevalence
    feats = rng.standard_normal((n, dim)) * np.where(labels, 1.3, 1.0)[:, None] * scale
    a = 12 * confidence
    probs = np.where(labels, rng.beta(a, 1.2, n), rng.beta(1.2, a, n))
    return feats, probs


def test_scipy_direction_that_the_check_relies_on() -> None:
    """ks_2samp(batch, reference, alternative='less') rejects when the batch's values are larger."""
    rng = np.random.default_rng(0)
    ref, larger, smaller = rng.normal(0, 1, 300), rng.normal(0.8, 1, 50), rng.normal(-0.8, 1, 50)
    assert ks_2samp(larger, ref, alternative="less").pvalue < 1e-3
    assert ks_2samp(smaller, ref, alternative="less").pvalue > 0.5
    assert ks_2samp(smaller, ref, alternative="greater").pvalue < 1e-3


def test_farther_batches_are_shifted_and_closer_ones_never() -> None:
    rng = np.random.default_rng(1)
    ref = synthetic_reference(rng)
    far = ref.compare(ref.distance(synthetic_batch(rng, 50, scale=1.5)[0]), synthetic_batch(rng, 50)[1])
    assert far.shifted and far.p_value < 1e-3
    assert {t["kind"] for t in far.tests} == {"feature distance (larger)", "score margin (smaller)"}
    # Closer than the reference (films the model knows better): never an alarm, however close.
    for scale in (0.8, 0.5, 0.1):
        feats, probs = synthetic_batch(rng, 50, scale=scale)
        near = ref.compare(ref.distance(feats), probs)
        assert not near.shifted, scale
        assert all(t["p_value"] > 0.5 for t in near.tests if t["kind"].startswith("feature")), (scale, near.tests)


def test_less_sure_scores_are_shifted_and_surer_ones_never() -> None:
    rng = np.random.default_rng(2)
    ref = synthetic_reference(rng)
    feats, unsure = synthetic_batch(rng, 60, confidence=0.25)
    result = ref.compare(ref.distance(feats), unsure)
    assert result.shifted
    assert min(result.tests, key=lambda t: t["p_value"])["kind"] == "score margin (smaller)"
    feats, sure = synthetic_batch(rng, 60, confidence=4.0)
    assert not ref.compare(ref.distance(feats), sure).shifted


def test_false_alarms_stay_under_alpha_whatever_the_prevalence() -> None:
    """Pneumonias lie farther out: a pooled test would call an all-pneumonia ward shifted; per predicted class it
    does not."""
    rng = np.random.default_rng(3)
    ref = synthetic_reference(rng)
    rates, pooled = {}, 0
    for prevalence in (0.0, 0.6, 1.0):
        hits = 0
        for _ in range(200):
            feats, probs = synthetic_batch(rng, 50, prevalence=prevalence)
            hits += ref.compare(ref.distance(feats), probs).shifted
            if prevalence == 1.0:
                pooled += ks_2samp(ref.distance(feats), ref.distances, alternative="less").pvalue < 0.05
        rates[prevalence] = hits / 200
    assert max(rates.values()) <= 0.08, rates  # alpha 0.05; 200 draws give about ±0.015
    assert pooled / 200 > 0.5  # what the stratification is for


def test_one_far_film_does_not_make_a_batch_shifted() -> None:
    rng = np.random.default_rng(4)
    ref = synthetic_reference(rng)
    feats, probs = synthetic_batch(rng, 24, prevalence=0.0)
    calm = ref.compare(ref.distance(feats), probs)
    # One film far out, scored pneumonia: its class has one film in the batch and is not tested.
    far = np.vstack([feats, np.full((1, feats.shape[1]), 50.0)]), np.append(probs, 0.55)
    result = ref.compare(ref.distance(far[0]), far[1])
    assert any(s.startswith("predicted pneumonia: 1 films") for s in result.skipped)
    assert result.tests == calm.tests and result.shifted == calm.shifted  # the far film moved nothing


def test_below_the_minimum_batch_there_is_no_check() -> None:
    rng = np.random.default_rng(5)
    ref = synthetic_reference(rng)
    feats, probs = synthetic_batch(rng, drift.MIN_BATCH - 1)
    with pytest.raises(drift.DriftUnavailable, match=f"at least {drift.MIN_BATCH}"):
        ref.compare(ref.distance(feats), probs)


def test_holm_against_hand_computed_values() -> None:
    assert drift.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_split_rates_pool_by_their_draws() -> None:
    """Three patient splits: 3 alarms in 10 draws, 0 in 30, and one that could not be measured. Pooled:
    3 alarms in 40 draws, not the mean of the two rates (0.15); the range and the shipped (first) split's
    rate are the measured splits' own."""
    pooled = drift_reference._pooled(
        [
            {"n": 50, "draws": 10, "rate": 0.3},
            {"n": 50, "draws": 30, "rate": 0.0},
            {"n": 50, "draws": 0, "rate": None, "note": "too few films"},
        ]
    )
    assert pooled["rate"] == pytest.approx(3 / 40) and pooled["draws"] == 40 and pooled["splits"] == 2
    assert pooled["split_range"] == [0.0, 0.3] and pooled["shipped_split_rate"] == 0.3
    # The first split unmeasured: no shipped rate, though the others still pool.
    later = drift_reference._pooled([{"n": 50, "draws": 0, "rate": None}, {"n": 50, "draws": 20, "rate": 0.1}])
    assert later["shipped_split_rate"] is None and later["rate"] == pytest.approx(0.1) and later["splits"] == 1


def test_reference_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ref = synthetic_reference(rng)
    ref.calibration = {"false_alarms": {"in-distribution": {"n": 50, "draws": 10, "rate": 0.0}}}
    ref.save(tmp_path / drift.REFERENCE_FILE)
    back = drift.Reference.load(tmp_path / drift.REFERENCE_FILE)
    assert np.array_equal(back.distances, ref.distances) and back.calibration == ref.calibration
    assert back.split_threshold == ref.split_threshold and back.score_source == "model"
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(drift.DriftUnavailable):
        drift.Reference.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------------- the shipped model, small real batches


@pytest.fixture(scope="module")
def model_with_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped model with a reference fitted on the 48 bundled films and two changed copies
    of each (only the contracts are tested on it: these films trained the model)."""
    from pneumo.data.transforms import STRESS
    from pneumo.model.loading import load_model

    root = tmp_path_factory.mktemp("drift")
    model_dir = copy_model(root / "model")
    films, groups = [], []
    for i, path in enumerate(sorted(SAMPLES.rglob("*.jpeg"))):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
        for k, variant in enumerate((pixels, pixels[:, ::-1], np.clip(pixels * 1.05, 0, 1))):
            out = root / "films" / f"{i}-{k}.png"
            out.parent.mkdir(exist_ok=True)
            Image.fromarray((variant * 255).astype(np.uint8)).save(out)
            films.append(str(out))
            groups.append(str(i))
    loaded = load_model(model_dir)
    probs = loaded.predict([np.asarray(Image.open(f), dtype=np.float32) / 255 for f in films])
    labels = [int("PNEUMONIA" in str(path)) for path in sorted(SAMPLES.rglob("*.jpeg")) for _ in range(3)]
    pd.DataFrame({"path": films, "label": labels, "probability": probs, "patient_id": groups}).to_csv(
        root / "reference.csv", index=False
    )
    reference = drift_reference.fit_reference(
        loaded,
        films,
        probs,
        groups=groups,
        description="bundled films (test)",
        conditions={"CLAHE": STRESS["CLAHE"]},
        draws=50,
        power_draws=20,
    )
    reference.save(drift.reference_path(loaded.path))
    drift_reference.record_in_card(loaded.path, reference)
    return model_dir


def test_fit_reference_measures_itself_and_goes_into_the_card(model_with_reference: Path) -> None:
    ref = drift.Reference.load(model_with_reference / drift.REFERENCE_FILE)
    assert ref.score_source == "model"  # the given probabilities were the model's own
    assert ref.n_fit + ref.n + ref.n_calibration == 144
    section = json.loads((model_with_reference / "card.json").read_text())["drift"]
    assert section["false_alarms"]["in-distribution"]["draws"] == 50
    assert "CLAHE" in section["power"]["stressed held-out films"]
    assert section["min_batch"] == drift.MIN_BATCH == 20


def test_check_batch_and_why_unavailable(model_with_reference: Path) -> None:
    from pneumo.data.collection import read_item
    from pneumo.model.loading import load_model

    loaded = load_model(model_with_reference)
    images = [read_item(str(p)) for p in sorted(SAMPLES.rglob("*.jpeg"))]
    result = drift.check_batch(loaded, images)
    assert result is not None and not result.shifted and result.n == 48
    assert set(result.to_dict()) >= {"shifted", "p_value", "n", "method", "reference", "tests"}
    assert drift.check_batch(loaded, images[:5]) is None
    assert "at least 20" in drift.why_unavailable(loaded, 5)
    assert drift.why_unavailable(loaded, 48) is None
    # Changed copies the model has never seen like this: turned films, a batch property the check sees.
    turned = [np.rot90(x) for x in images]
    assert drift.check_batch(loaded, turned).shifted


def test_a_reference_of_another_model_is_refused(model_with_reference: Path, tmp_path: Path) -> None:
    from pneumo.model.loading import load_model

    other = copy_model(tmp_path / "other")
    ref = drift.Reference.load(model_with_reference / drift.REFERENCE_FILE)
    ref.model_sha256_16 = "0" * 16  # built on another version of the network: its features mean nothing here
    ref.save(other / drift.REFERENCE_FILE)
    loaded = load_model(other)
    assert "another version of the model" in drift.why_unavailable(loaded, 50)
    assert drift.check_batch(loaded, [np.zeros((64, 64), np.float32)] * 30) is None


def test_cli_drift_reference_builds_and_records(
    model_with_reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pneumo.cli import main

    model = copy_model(tmp_path / "m")
    csv = model_with_reference.parent / "reference.csv"
    assert main(["drift-reference", "--model", str(model), "--predictions", str(csv), "--draws", "40"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score_source"] == "model" and out["false_alarms"]["in-distribution"]["draws"] == 40
    assert len(out["power"]["stressed held-out films"]) == 16  # the whole stress suite by default
    assert json.loads((model / "card.json").read_text())["drift"]["n_reference"] == out["n_reference"]
    assert drift.Reference.load(model / drift.REFERENCE_FILE).n == out["n_reference"]
    other = copy_model(tmp_path / "ro")
    (other / "card.json").chmod(0o444)
    try:
        assert main(["drift-reference", "--model", str(other), "--predictions", str(csv)]) == 2
    finally:
        (other / "card.json").chmod(0o644)
    assert "read-only" in capsys.readouterr().err and not (other / drift.REFERENCE_FILE).exists()


def test_cli_drift_contract(model_with_reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pneumo.cli import main
    from pneumo.model.loading import load_model

    assert main(["drift", str(SAMPLES), "--json", "--model", str(model_with_reference)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["shifted"], bool) and out["shifted"] is False
    # The command's figures are the library's on the same 48 films, named one by one rather than by folder.
    films = sorted(str(p) for p in SAMPLES.rglob("*.jpeg"))
    direct, unreadable = drift.check_paths(load_model(model_with_reference), films)
    assert len(films) == 48 and not unreadable and out["n"] == direct.n == 48
    assert out["p_value"] == pytest.approx(direct.p_value, rel=1e-9, abs=1e-12)
    assert [t["p_value"] for t in out["tests"]] == pytest.approx([t["p_value"] for t in direct.tests], abs=1e-12)
    assert isinstance(out["method"], str) and "one-sided" in out["method"] and "bundled films" in out["reference"]
    few = [str(p) for p in sorted((SAMPLES / "NORMAL").iterdir())[:5]]
    for args in (
        ["drift", *few, "--model", str(model_with_reference)],  # too few films
        ["drift", str(tmp_path / "missing"), "--model", str(model_with_reference)],
        ["drift", str(SAMPLES), "--model", str(copy_model(tmp_path / "bare"))],
    ):  # no reference
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err


def test_evaluate_report_has_a_drift_object(model_with_reference: Path, tmp_path: Path) -> None:
    from pneumo.evaluation.external import evaluate_data

    report = evaluate_data(model_with_reference, SAMPLES)
    assert report["drift"]["available"] is True and report["drift"]["n"] == 48 and report["drift"]["shifted"] is False
    assert report["operating_point"] == "shipped"
    bare = evaluate_data(copy_model(tmp_path / "bare"), SAMPLES)
    assert (
        bare["drift"] == {"available": False, "reason": bare["drift"]["reason"]}
        and "no drift reference" in bare["drift"]["reason"]
    )


def test_a_read_only_card_is_refused(model_with_reference: Path, tmp_path: Path) -> None:
    model = copy_model(tmp_path / "ro")
    card = model / "card.json"
    before = card.read_bytes()
    card.chmod(0o444)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            drift_reference.record_in_card(model, drift.Reference.load(model_with_reference / drift.REFERENCE_FILE))
    finally:
        card.chmod(0o644)
    assert card.read_bytes() == before


# ---------------------------------------------------------------------- measured on the shared data


@pytest.fixture(scope="module")
def shipped_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shipped model's reference from its held-out films (val_predictions.csv), measured on a few
    stress conditions and on NORMAL2-IM films the model trained on. Built once for the module."""
    from pneumo.data.collection import pixel_hash, read_item
    from pneumo.data.transforms import STRESS
    from pneumo.model.loading import load_model

    require(SHARED_TRAIN.is_dir(), f"shared training data not found at {SHARED_TRAIN}")
    model_dir = copy_model(tmp_path_factory.mktemp("shipped") / "model")
    frame, what = drift_reference.predictions_for_reference(ROOT / "models" / "model.keras")
    frame["path"] = [str(ROOT / p) for p in frame["path"]]
    trained = set(json.loads((ROOT / "models" / "image_hashes.json").read_text())["train"])
    normal2 = sorted(str(p) for p in (SHARED_TRAIN / "NORMAL").glob("NORMAL2-IM-*"))
    normal2_trained = [p for p in normal2[::3] if pixel_hash(read_item(p)) in trained]
    loaded = load_model(model_dir)
    conditions = {k: STRESS[k] for k in ("CLAHE", "rotate +8°", "blur σ=2 px")}
    ref = drift_reference.fit_reference(
        loaded,
        frame["path"].tolist(),
        frame["probability"].to_numpy(),
        groups=frame["patient_id"].astype(str).tolist(),
        labels=frame["label"].tolist(),
        description=what,
        conditions=conditions,
        draws=500,
        power_draws=100,
        populations={"NORMAL2-IM films the model trained on": normal2_trained},
    )
    ref.save(drift.reference_path(loaded.path))
    return {"reference": ref, "model": model_dir, "normal2_trained": len(normal2_trained)}


@pytest.mark.slow
def test_false_alarms_on_in_distribution_batches_of_50(shipped_reference: dict) -> None:
    calibration = shipped_reference["reference"].calibration
    for case in ("in-distribution", "all normal", "all pneumonia"):
        figure = calibration["false_alarms"][case]
        assert figure["n"] == 50 and figure["draws"] == 500 and figure["splits"] == drift.SPLITS
        # The pooled rate over patient splits is the figure the card promises; one split's rate varies with
        # which patients formed its reference (0-10 % measured), so it is reported, not bounded here (how the
        # splits are pooled is checked by hand in test_split_rates_pool_by_their_draws).
        assert figure["rate"] <= 0.05, (case, figure)
    # Films the model was trained on lie closer: they must not raise it.
    trained = calibration["populations"]["NORMAL2-IM films the model trained on"]
    assert trained["films"] >= 150 and trained["rate"] <= 0.08, trained


@pytest.mark.slow
def test_power_on_stressed_held_out_films_at_n_50(shipped_reference: dict) -> None:
    power = shipped_reference["reference"].calibration["power"]["stressed held-out films"]
    # CLAHE costs the shipped point most (specificity 0.894 at the threshold): it is always found.
    assert power["CLAHE"]["rate"] >= 0.95, power
    # The framing-invariant ensemble was trained on wider rotations and blurs, so its features move less under
    # them and the check finds them less often: its card measured 0.89 (rotation) and 0.26 (blur) at n = 50 over
    # 200 draws, where the previous ensemble gave 0.95 and 0.59. The bounds leave two standard errors of the 100
    # draws here (0.03 and 0.045) below those: a model whose features stop moving at all fails them.
    assert power["rotate +8°"]["rate"] >= 0.8, power
    assert power["blur σ=2 px"]["rate"] >= 0.15, power


@pytest.mark.slow
def test_bundled_samples_do_not_raise_it(shipped_reference: dict) -> None:
    from pneumo.model.loading import load_model

    result, unreadable = drift.check_paths(load_model(shipped_reference["model"]), drift.expand([SAMPLES]))
    assert not unreadable and result.n == 48 and not result.shifted, result.to_dict()
