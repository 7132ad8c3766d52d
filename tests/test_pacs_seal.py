"""A screening SR is believed only when it proves it is ours: its seal checks out and its card is in force."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pneumo.integrations.pacs.priors import ScreeningKey, prior_screenings, read_screening_sr
from pneumo.integrations.pacs.results import SCREENED, InstanceResult
from pneumo.integrations.pacs.seal import KEY_FILE, seal_key
from pneumo.integrations.pacs.writers import build_screening_sr
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
    build_screening_sr(source, result, loaded, "1.2.3.4.5", 1, seal_key=key).save_as(stored)
    # Written and read back, as a server stores it and answers for its metadata.
    return json.loads(pydicom.dcmread(io.BytesIO(stored.getvalue())).to_json())


def _set_probability(item: dict, value: float) -> None:
    """Edit the probability (concept DCM 122157) inside the SR's JSON, as a forger would."""
    for child in item.get("0040A730", {}).get("Value", []):
        concept = child.get("0040A043", {}).get("Value", [{}])[0]
        if concept.get("00080100", {}).get("Value") == ["122157"]:
            measured = child["0040A300"]["Value"][0]
            for tag in ("0040A30A", "0040A161"):  # NumericValue, FloatingPointValue
                if tag in measured:
                    measured[tag]["Value"] = [value]
            return
    raise AssertionError("no probability in the SR")


def test_our_sealed_sr_is_believed_and_a_forged_or_unsealed_one_is_not(loaded: Any) -> None:
    key, in_force = ScreeningKey.of(loaded), card_hash(loaded)
    ours = _sr(loaded)
    prior = read_screening_sr(ours)
    assert prior is not None and prior.seal and prior.distrust(KEY, in_force) is None

    forged = json.loads(json.dumps(ours))
    _set_probability(forged, 0.95)
    assert read_screening_sr(forged).probability == pytest.approx(0.95)
    assert "does not match" in read_screening_sr(forged).distrust(KEY, in_force)

    unsealed = read_screening_sr(_sr(loaded, key=None))
    assert unsealed.distrust(KEY, in_force) == "carries no seal"
    assert "does not match" in prior.distrust(b"another deployment", in_force)
    assert "not the card in force" in prior.distrust(KEY, "000000000000")

    done, untrusted = prior_screenings([ours, forged, _sr(loaded, key=None)], key, KEY, in_force)
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
