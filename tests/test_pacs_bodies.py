"""The bodies DICOMweb exchanges (pneumo.integrations.pacs.bodies) and what an error's body adds to its line
(pneumo.integrations.pacs.transport, overridden by the client for a refused store), without a server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pneumo.integrations.pacs import bodies, client, transport


def _in_pieces(data: bytes, size: int) -> Iterator[bytes]:
    """data as a server might send it: in pieces of size bytes, cut anywhere (inside a UTF-8 character too)."""
    return (data[i : i + size] for i in range(0, len(data), size))


def test_json_items_reads_an_array_in_pieces_and_stops_at_its_limit() -> None:
    items = [{"0020000D": {"vr": "UI", "Value": [f"1.2.{i}"]}, "note": "é" * i} for i in range(5)]
    data = b" \r\n" + json.dumps(items).encode()
    assert bodies.json_items(_in_pieces(data, 3)) == (items, False)
    # Past the limit: the first ones, and word that more followed; the rest of a long answer is never asked for.
    many = [{"00100020": {"vr": "LO", "Value": ["x" * 1000]}}] * 1000  # ~1 MB
    pieces = _in_pieces(json.dumps(many).encode(), 4096)
    assert bodies.json_items(pieces, max_items=2) == (many[:2], True)
    assert len(list(pieces)) > 200  # of ~250 pieces: at most a read-ahead of transport.CHUNK_BYTES was taken
    assert bodies.json_items(iter([b"[]"])) == ([], False)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b'{"not": "an array"}', "not a JSON array"),
        (b'[{"a": 1} {"b": 2}]', "broken after item 1"),
        (b'[{"a": 1}, {"b": ', "not valid JSON"),
        (b'[{"a": 1},', "ends inside its JSON array"),
        (b'[{"a": 1}, [2]]', "item 2 of the answer is not a DICOM JSON object"),
    ],
)
def test_json_items_refuses_what_is_not_an_array_of_objects(answer: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        bodies.json_items(_in_pieces(answer, 4))


def test_a_stow_body_parts_back_into_the_datasets_it_carries() -> None:
    """stow_body's first part, sliced out as a retrieved instance is (first_part), is the dataset as written."""
    import io

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def dataset(uid: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
        ds.PatientID = "P1"
        return ds

    first, second = generate_uid(), generate_uid()
    body, content_type = bodies.stow_body([dataset(first), dataset(second)])
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary="')
    part = bodies.first_part(content_type, body)
    read = pydicom.dcmread(io.BytesIO(part), force=True)  # written as built: no preamble, as the server keeps it
    assert read.SOPInstanceUID == first and read.PatientID == "P1"
    assert second.encode() not in part  # one part, cut at the next delimiter
    assert body.endswith(b"--") and body.count(content_type.split('boundary="')[1][:-1].encode()) == 3


def test_first_part_of_answers_that_hold_none() -> None:
    assert bodies.first_part("application/dicom", b"DICM...") == b"DICM..."  # a single-part answer is itself
    multipart = 'multipart/related; type="application/dicom"; boundary=XyZ'
    assert bodies.first_part(multipart, b"--XyZ--") == b""  # the closing delimiter only
    assert bodies.first_part(multipart, b"no delimiter at all") == b""
    assert bodies.first_part(multipart, b"--XyZ\r\nContent-Type: application/dicom") == b""  # headers never end
    assert bodies.first_part(multipart, b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nabc") == b"abc"


def test_a_refused_store_names_its_failure_reasons_and_other_bodies_their_first_words() -> None:
    refused = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {"00081197": {"vr": "US", "Value": [0xA900]}},
                {"00081197": {"vr": "US", "Value": [0xC123]}},
                {"00081197": {"vr": "US", "Value": [0xA900]}},
            ],
        }
    }
    detail = bodies.stow_failure_detail(json.dumps(refused).encode())
    assert detail == " (failure reason 0xA900 data set does not match SOP class or study; failure reason 0xC123)"
    pacs = client.Pacs("http://127.0.0.1:1/dicom-web")
    assert pacs._error_detail(json.dumps(refused).encode()) == detail
    # Not DICOM JSON, or DICOM JSON without failures: the body's first words, escaped (the body is the server's).
    assert bodies.stow_failure_detail(b"<html>busy</html>") == ""
    assert pacs._error_detail(b"  Service\n\tunavailable \x1b[2J ") == ": Service unavailable \\x1b[2J"
    assert pacs._error_detail(b"{}") == ": {}"
    assert pacs._error_detail(b"") == ""
    bare = transport.Transport("http://127.0.0.1:1/dicom-web")  # the transport alone knows nothing of STOW answers
    assert bare._error_detail(json.dumps(refused).encode()).startswith(': {"00081198"')
