"""The suite's one guard for missing prerequisites (tests.conftest.require): a skip with its reason on a
workstation, a failure on CI, so a runner without the shared data, Chromium or Orthanc cannot pass green."""

from __future__ import annotations

import pytest

from tests.conftest import require


@pytest.mark.parametrize("value", ["true", "True", " TRUE "])
def test_on_ci_a_missing_prerequisite_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no Orthanc here"):
        require(False, "no Orthanc here")
    require(True, "present: nothing happens")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_elsewhere_a_missing_prerequisite_skips_with_its_reason(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no Orthanc here"):
        require(None, "no Orthanc here")
    require("/usr/bin/chromium", "a found path counts as present")
