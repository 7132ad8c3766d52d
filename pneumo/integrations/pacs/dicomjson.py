"""DICOM JSON (PS3.18 F.2) read by keyword: a tag, one value, all values.

The answers are a server's: an element that is not an object, a Value that is not a list or a value that is neither
text nor a number (a nested list, say) reads as absent, so no reader of a field meets a type it does not expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _element(item: Any, keyword: str) -> Mapping[str, Any]:
    element = item.get(_tag(keyword)) if isinstance(item, Mapping) else None
    return element if isinstance(element, Mapping) else {}


def _value(item: Mapping[str, Any], keyword: str, default: Any = "") -> Any:
    """The element's first value: text or a number (a person name's alphabetic form); default otherwise."""
    values = _element(item, keyword).get("Value")
    if not isinstance(values, list) or not values:
        return default
    first = values[0]
    if isinstance(first, Mapping) and "Alphabetic" in first:
        name = first["Alphabetic"]
        return name if isinstance(name, str) else default
    return first if isinstance(first, (str, int, float)) else default


def _values(item: Mapping[str, Any], keyword: str) -> list[Any]:
    """Every value of the element (a sequence's items, a multi-valued string's parts); [] when it is not a list."""
    values = _element(item, keyword).get("Value")
    return list(values) if isinstance(values, list) else []


def _texts(item: Mapping[str, Any], keyword: str) -> list[str]:
    """A multi-valued element's text values (ModalitiesInStudy, ImageType); anything else in it is left out."""
    return [str(v) for v in _values(item, keyword) if isinstance(v, (str, int, float))]
