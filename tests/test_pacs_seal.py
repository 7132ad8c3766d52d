"""A screening SR is believed only when it proves it is ours: its seal checks out and its card is in force. The TID 1500
report pneumo writes now and the Enhanced SR it wrote before are both read and both checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pneumo.integrations.pacs.priors import ScreeningKey, prior_screenings, read_screening_sr
from pneumo.integrations.pacs.results import SCREENED, InstanceResult
from pneumo.integrations.pacs.seal import KEY_FILE, seal_key
from pneumo.integrations.pacs.writers import build_enhanced_sr, build_screening_sr
from pneumo.model.loading import load_model
from pneumo.model.reading import card_hash

KEY = b"the deployment's secret"


@pytest.fixture(scope="module")
def loaded(tiny_run: Path) -> Any:
    return load_model(tiny_run / "model.keras")


def _sr(
    loaded: Any,
    probability: float = 0.01,
    decision: str = "NORMAL",
    key: bytes | None = KEY,
    operating_point: str = "shipped",
    charset: str | None = "ISO_IR 192",
    enhanced: bool = False,
) -> dict:
    """A screening SR of the first sample film, as a PACS's metadata answer carries it (DICOM JSON)."""
    from pneumo.integrations.pacs_server import sample_datasets

    source = sample_datasets(lateral=False)[0][0]
    if charset is None:
        del source.SpecificCharacterSet  # many CR and DX films declare none
    result = InstanceResult(
        str(source.StudyInstanceUID),
        str(source.SeriesInstanceUID),
        str(source.SOPInstanceUID),
        "film",
        SCREENED,
        probability=probability,
        prediction=decision,
        threshold=loaded.threshold,
        operating_point=operating_point,
        model=loaded.card.name,
        card_hash=card_hash(loaded),
    )
    import io

    import pydicom

    stored = io.BytesIO()
    build = build_enhanced_sr if enhanced else build_screening_sr
    build(source, result, loaded, "1.2.3.4.5", 1, seal_key=key).save_as(stored)
    # Written and read back, as a server stores it and answers for its metadata.
    return json.loads(pydicom.dcmread(io.BytesIO(stored.getvalue())).to_json())


def _items(item: dict) -> list[dict]:
    """Every content item of an SR's JSON, depth first (the TID 1500 report nests them in measurement groups)."""
    found = []
    for child in item.get("0040A730", {}).get("Value", []):
        found += [child, *_items(child)]
    return found


def _concept(item: dict) -> str:
    return item.get("0040A043", {}).get("Value", [{}])[0].get("00080100", {}).get("Value", [""])[0]


def _set_probability(item: dict, value: float) -> None:
    """Edit the probability (concept DCM 122157) inside the SR's JSON, as a forger would."""
    for child in _items(item):
        if _concept(child) == "122157":
            measured = child["0040A300"]["Value"][0]
            for tag in ("0040A30A", "0040A161"):  # NumericValue, FloatingPointValue
                if tag in measured:
                    measured[tag]["Value"] = [value]
            return
    raise AssertionError("no probability in the SR")


@pytest.mark.parametrize("enhanced", [False, True], ids=["tid1500", "enhanced-sr"])
def test_our_sealed_sr_is_believed_and_a_forged_or_unsealed_one_is_not(loaded: Any, enhanced: bool) -> None:
    key, in_force = ScreeningKey.of(loaded), card_hash(loaded)
    ours = _sr(loaded, enhanced=enhanced)
    prior = read_screening_sr(ours)
    assert prior is not None and prior.seal and prior.distrust(KEY, in_force) is None

    forged = json.loads(json.dumps(ours))
    _set_probability(forged, 0.95)
    assert read_screening_sr(forged).probability == pytest.approx(0.95)
    assert "does not match" in read_screening_sr(forged).distrust(KEY, in_force)

    unsealed = read_screening_sr(_sr(loaded, key=None, enhanced=enhanced))
    assert unsealed.distrust(KEY, in_force) == "carries no seal"
    assert "does not match" in prior.distrust(b"another deployment", in_force)
    assert "not the card in force" in prior.distrust(KEY, "000000000000")

    done, untrusted = prior_screenings([ours, forged, _sr(loaded, key=None, enhanced=enhanced)], key, KEY, in_force)
    assert list(done.values())[0].sr_uid == prior.sr_uid
    reasons = next(iter(untrusted.values()))
    assert len(reasons) == 2 and any("forged" in r for r in reasons) and any("no seal" in r for r in reasons)


def test_without_a_secret_each_machine_makes_its_own_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PNEUMO_PACS_SECRET", raising=False)
    first = seal_key(folder=tmp_path)
    assert seal_key(folder=tmp_path) == first and len(first) == 32
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o077 == 0  # readable by its owner only
    assert seal_key(folder=tmp_path / "other") != first
    assert seal_key("configured") == b"configured"


def test_a_site_name_outside_latin_1_reads_back_as_sealed_from_a_film_without_a_character_set(loaded: Any) -> None:
    prior = read_screening_sr(_sr(loaded, operating_point="Łódź – site", charset=None))
    assert prior.key.operating_point == "Łódź – site"
    assert prior.distrust(KEY, card_hash(loaded)) is None


def test_a_crafted_seal_or_sr_is_distrusted_never_a_crash(loaded: Any) -> None:
    from pneumo.integrations.pacs.seal import verify

    assert not verify(KEY, {"a": 1}, "é" * 64) and not verify(KEY, {"a": 1}, "0" * 63)
    ours = _sr(loaded)
    crafted = json.loads(json.dumps(ours))
    crafted["0040A730"] = {"vr": "SQ", "Value": ["not an item"]}
    done, untrusted = prior_screenings([crafted], ScreeningKey.of(loaded), KEY, card_hash(loaded))
    assert done == {} and untrusted == {}


def test_a_damaged_key_file_is_replaced_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PNEUMO_PACS_SECRET", raising=False)
    (tmp_path / KEY_FILE).write_text("")  # a crash between create and write
    key = seal_key(folder=tmp_path)
    assert len(key) == 32 and seal_key(folder=tmp_path) == key

    def refused(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    from pneumo.integrations.pacs import seal as seal_module

    monkeypatch.setattr(seal_module, "_write_key", refused)  # a read-only runs folder
    own = seal_key(folder=tmp_path / "elsewhere")
    assert len(own) == 32 and own == seal_key(folder=tmp_path / "elsewhere")  # this process's own, no crash
    assert not (tmp_path / "elsewhere" / KEY_FILE).exists()


def test_both_layouts_read_back_the_same_reading(loaded: Any) -> None:
    """A study screened before the TID 1500 report (an Enhanced SR) is still "already screened": the same fields, the
    same seal; only the new report carries the region and the PDF reference (none here: neither was given)."""
    new, old = (
        read_screening_sr(_sr(loaded, 0.42, "PNEUMONIA")),
        read_screening_sr(_sr(loaded, 0.42, "PNEUMONIA", enhanced=True)),
    )
    assert new.layout == "tid1500" and old.layout == "enhanced"
    for field in ("source_uid", "key", "probability", "decision", "warnings", "card_hash", "seal"):
        assert getattr(new, field) == getattr(old, field), field
    assert new.key.threshold == loaded.threshold  # text in the new report, read back to the very float
    assert new.distrust(KEY, card_hash(loaded)) is None and old.distrust(KEY, card_hash(loaded)) is None


def test_an_altered_threshold_or_decision_text_breaks_the_seal(loaded: Any) -> None:
    ours = _sr(loaded)
    for concept, value in (("THRESHOLD", "0.5"), ("DECISION", "PNEUMONIA")):
        altered = json.loads(json.dumps(ours))
        for child in _items(altered):
            if _concept(child) == concept:
                child["0040A160"]["Value"] = [value]
        prior = read_screening_sr(altered)
        if concept == "THRESHOLD":  # another threshold is another screening key: not this model's reading
            assert not prior.key.matches(ScreeningKey.of(loaded))
        assert "does not match" in prior.distrust(KEY, card_hash(loaded))
