"""DICOM JSON (PS3.18 F.2) read by keyword: a tag, one value, all values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _value(item: Mapping[str, Any], keyword: str, default: Any = "") -> Any:
    values = item.get(_tag(keyword), {}).get("Value")
    if not values:
        return default
    first = values[0]
    if isinstance(first, dict) and "Alphabetic" in first:
        return str(first["Alphabetic"])
    return first


def _values(item: Mapping[str, Any], keyword: str) -> list[Any]:
    return list(item.get(_tag(keyword), {}).get("Value") or [])
