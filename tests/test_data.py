from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.data import collection as D
from tests.conftest import make_folder, synthetic_xray, write_png


@pytest.mark.parametrize(
    "name, patient, subtype",
    [
        ("person1417_bacteria_3631.jpeg", "person1417", "bacterial"),
        ("person22_virus_55.jpeg", "person22", "viral"),
        ("IM-0115-0001.jpeg", "IM-0115", ""),
        ("NORMAL2-IM-0115-0002.jpeg", "NORMAL2-IM-0115", ""),
        ("scan_042.png", "scan_042.png", ""),
    ],
)
def test_parse_name(name: str, patient: str, subtype: str) -> None:
    pid, sub = D.parse_name(name)
    assert sub == subtype
    assert pid == patient or pid.endswith(patient)


def test_class_folders_case_insensitive(tmp_path: Path) -> None:
    make_folder(tmp_path / "x", n_per_class=4)
    (tmp_path / "x" / "NORMAL").rename(tmp_path / "x" / "normal")
    ds = D.scan(tmp_path / "x")
    assert ds.layout == "class folders"
    assert sorted(ds.frame["class_name"].value_counts().to_dict().items()) == [("NORMAL", 4), ("PNEUMONIA", 4)]


def test_split_folders(tmp_path: Path) -> None:
    for split in ("train", "test"):
        make_folder(tmp_path / split, n_per_class=3, seed=len(split))
    ds = D.scan(tmp_path)
    assert ds.layout == "split folders"
    assert ds.frame.groupby("split").size().to_dict() == {"test": 6, "train": 6}


def test_csv_manifest_with_patients_and_splits(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = []
    for i in range(6):
        write_png(tmp_path / "img" / f"{i}.png", synthetic_xray(rng, pneumonia=i % 2 == 1))
        rows.append(
            {
                "path": f"img/{i}.png",
                "label": "PNEUMONIA" if i % 2 else "NORMAL",
                "patient_id": f"p{i // 2}",
                "split": "test" if i >= 4 else "train",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    ds = D.scan(tmp_path / "labels.csv")
    assert ds.layout == "CSV manifest"
    assert ds.frame["patient_id"].tolist() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert ds.frame["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert (ds.frame["split"] == "test").sum() == 2


def test_medmnist_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, test = (rng.random((10, 28, 28)) * 255).astype(np.uint8), (rng.random((4, 28, 28)) * 255).astype(np.uint8)
    np.savez(
        tmp_path / "pneumoniamnist.npz",
        train_images=train,
        train_labels=np.array([[0], [1]] * 5),
        test_images=test,
        test_labels=np.array([[1]] * 4),
    )
    ds = D.scan(tmp_path)
    assert ds.layout == "MedMNIST npz" and len(ds) == 14
    # Each item is its own array of the archive, grey level / 255, and carries its own label.
    np.testing.assert_allclose(D.read_item(ds.frame["path"][0]), train[0] / 255.0, atol=1e-6, rtol=0)
    np.testing.assert_allclose(D.read_item(ds.frame["path"][13]), test[3] / 255.0, atol=1e-6, rtol=0)
    assert ds.frame["label"].tolist() == [0, 1] * 5 + [1] * 4


def test_bad_roots_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(D.DatasetError, match="no such file"):
        D.scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DatasetError, match="empty folder"):
        D.scan(tmp_path / "empty")
    (tmp_path / "other" / "cats").mkdir(parents=True)
    with pytest.raises(D.DatasetError, match="cats/"):
        D.scan(tmp_path / "other")


def test_summarize_counts_duplicates_and_unreadable(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "x", n_per_class=6)
    shutil.copy(root / "NORMAL" / "IM-0000-0000.png", root / "NORMAL" / "IM-0099-0001.png")
    (root / "PNEUMONIA" / "person77_virus_1.png").write_bytes(b"%PDF-1.4 not an image")
    summary = D.summarize(root)
    assert summary.counts.loc["train", "NORMAL"] == 7 and summary.counts.loc["train", "PNEUMONIA"] == 7
    assert [Path(p).name for p in summary.duplicate_groups[0]] == ["IM-0000-0000.png", "IM-0099-0001.png"]
    assert len(summary.unreadable) == 1 and "PDF" in summary.unreadable[0][1]
    assert summary.subtypes == {"bacterial": 4, "viral": 3}
    # Of the readable films (7 normal, 6 pneumonia): the PDF cannot weigh in the loss.
    assert summary.imbalance_ratio == pytest.approx(7 / 6) and summary.n_readable == 13
    assert summary.patients_per_class["NORMAL"] == 4  # IM-0000..0002 and IM-0099
    as_json = summary.to_dict()
    assert as_json["images_per_patient"]["max"] == 2


def test_split_keeps_patients_and_duplicates_on_one_side(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "x", n_per_class=40, images_per_patient=3)
    # A duplicate under another patient's name must pull both patients to the same side.
    shutil.copy(root / "NORMAL" / "IM-0000-0000.png", root / "NORMAL" / "IM-0500-0001.png")
    ds = D.scan(root)
    for seed in range(3):
        train, val = D.split(ds, val_fraction=0.2, seed=seed)
        assert not set(train["patient_id"]) & set(val["patient_id"])
        assert len(train) + len(val) == len(ds)
        same_side = {"IM-0000", "IM-0500"} <= set(train["patient_id"]) or {"IM-0000", "IM-0500"} <= set(
            val["patient_id"]
        )
        assert same_side
        assert 0.3 < val["label"].mean() < 0.7  # stratified
    a, _ = D.split(ds, 0.2, seed=5)
    b, _ = D.split(ds, 0.2, seed=5)
    assert a["path"].tolist() == b["path"].tolist()


def test_split_never_uses_test_rows(tmp_path: Path) -> None:
    for split in ("train", "test"):
        make_folder(tmp_path / split, n_per_class=20, seed=len(split))
    train, val = D.split(D.scan(tmp_path), 0.2)
    assert set(train["split"]) | set(val["split"]) == {"train"}


def test_class_weights_balance_the_loss() -> None:
    weights = D.class_weights(np.array([0] * 10 + [1] * 30))
    assert weights[0] * 10 == pytest.approx(weights[1] * 30)


def test_manifest_rows_outside_its_folder_are_refused_unopened(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "m", n_per_class=3, size=40)
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / "NORMAL").iterdir().__next__().read_bytes())
    (root / "link.png").symlink_to(secret)
    rows = [f"NORMAL/{p.name},NORMAL" for p in (root / "NORMAL").iterdir()]
    rows += [f"PNEUMONIA/{p.name},PNEUMONIA" for p in (root / "PNEUMONIA").iterdir()]
    rows += ["../secret.png,NORMAL", f"{secret},PNEUMONIA", "link.png,NORMAL", "/etc/passwd,NORMAL"]
    (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = D.scan(root / "list.csv")
    assert len(ds) == 6 and not any("secret" in p or "link" in p for p in ds.frame["path"])
    assert len(ds.problems) == 4 and all("outside" in reason for _, reason in ds.problems)
    summary = D.summarize(ds)
    assert sum("outside" in reason for _, reason in summary.unreadable) == 4


def test_conflicting_manifest_labels_are_reported(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "m", n_per_class=3, size=40)
    first = sorted((root / "NORMAL").iterdir())[0].name
    rows = [f"NORMAL/{p.name},NORMAL" for p in (root / "NORMAL").iterdir()]
    rows += [f"PNEUMONIA/{p.name},1" for p in (root / "PNEUMONIA").iterdir()] + [f"NORMAL/{first},PNEUMONIA"]
    (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = D.scan(root / "list.csv")
    assert len(ds) == 5 and any("both labels" in reason for _, reason in ds.problems)


def test_case_variant_class_folders_are_merged(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "c", n_per_class=4, size=40)
    extra = root / "normal"
    extra.mkdir()
    write_png(extra / "IM-0900-0001.png", synthetic_xray(np.random.default_rng(5), 40))
    frame = D.scan(root).frame
    assert (frame.label == 0).sum() == 5


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((4, 28, 28)), np.array([0, 1, 2, 1]), "must be 0"),
        (np.zeros((4, 28)), np.array([0, 1, 0, 1]), "shape"),
    ],
)
def test_bad_medmnist_files_are_refused_with_a_reason(tmp_path: Path, images, labels, message: str) -> None:
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=images, train_labels=labels)
    with pytest.raises(D.DatasetError, match=message):
        D.scan(tmp_path / "pneumoniamnist.npz")


def test_npz_archives_are_kept_open_boundedly_and_reread_when_rewritten(tmp_path: Path) -> None:
    """Items of one .npz share one open archive; a file rewritten in place is read afresh, never through the
    stale handle; and only NPZ_OPEN_MAX archives stay open however many are read."""
    D._open_npz.cache_clear()
    path = tmp_path / "a.npz"
    np.savez(path, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.array([0, 1]))
    item = f"{path}{D.NPZ_SEPARATOR}train{D.NPZ_SEPARATOR}1"
    assert D.read_item(item).max() == 0.0
    D.read_item(f"{path}{D.NPZ_SEPARATOR}train{D.NPZ_SEPARATOR}0")
    assert D._open_npz.cache_info().currsize == 1 and D._open_npz.cache_info().hits == 1
    import os

    before = os.stat(path).st_mtime_ns
    np.savez(path, train_images=np.full((2, 8, 8), 255, np.uint8), train_labels=np.array([0, 1]))
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a later mtime even on a coarse-clocked file system
    assert D.read_item(item).min() == 1.0
    for i in range(D.NPZ_OPEN_MAX + 3):
        other = tmp_path / f"b{i}.npz"
        np.savez(other, train_images=np.zeros((1, 8, 8), np.uint8), train_labels=np.array([0]))
        D.read_item(f"{other}{D.NPZ_SEPARATOR}train{D.NPZ_SEPARATOR}0")
    assert D._open_npz.cache_info().currsize == D.NPZ_OPEN_MAX
    D._open_npz.cache_clear()


# ---------------------------------------------------------------------- unreadable films and symbolic links


def test_no_class_weights_from_films_that_cannot_be_read(tmp_path: Path) -> None:
    """The probe: `summarize` on 100,000 empty files reported class weights, computed from nothing."""
    import json

    empty = tmp_path / "empty"
    for name in ("NORMAL/a.png", "NORMAL/b.png", "PNEUMONIA/c.png", "PNEUMONIA/d.png", "PNEUMONIA/e.png"):
        (empty / name).parent.mkdir(parents=True, exist_ok=True)
        (empty / name).write_bytes(b"")
    summary = D.summarize(empty)
    assert summary.n_images == 5 and summary.n_readable == 0 and len(summary.unreadable) == 5
    assert summary.class_weights == {}
    as_json = summary.to_dict()
    assert as_json["class_weights"] == {} and as_json["imbalance_ratio"] is None and as_json["n_readable"] == 0
    json.dumps(as_json, allow_nan=False)  # valid JSON: no NaN, no Infinity

    # Some readable: the weights are those of the readable films (4 normal, 2 pneumonia), not of the listed 4 and 5.
    mixed = make_folder(tmp_path / "mixed", n_per_class=4, size=40)
    for stale in sorted((mixed / "PNEUMONIA").iterdir())[:2]:
        stale.unlink()
    for i in range(3):
        (mixed / "PNEUMONIA" / f"empty{i}.png").write_bytes(b"")
    summary = D.summarize(mixed)
    assert summary.n_readable == 6 and summary.counts.loc["train", "PNEUMONIA"] == 5
    assert summary.class_weights == pytest.approx(D.class_weights(np.array([0] * 4 + [1] * 2)))
    assert summary.imbalance_ratio == pytest.approx(2.0)


def test_summarize_command_says_weights_are_not_computed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pneumo.cli import main

    for name in ("NORMAL/a.png", "PNEUMONIA/b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "class weights not computed: 0 readable films" in out and "2 images, 0 readable" in out


def _half_linked(tmp_path: Path) -> tuple[Path, Path]:
    """data/NORMAL and data/PNEUMONIA, 4 films each, every second one a symbolic link to a film in elsewhere/."""
    source = make_folder(tmp_path / "elsewhere", n_per_class=4, size=40)
    data = tmp_path / "data"
    for i, film in enumerate(sorted(source.glob("*/*.png"))):
        target = data / film.parent.name / film.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(film) if i % 2 else shutil.copy(film, target)
    return data, source


def test_linked_films_are_counted_followed_or_refused_and_named(tmp_path: Path) -> None:
    """The probe: half the films linked, evaluate said n = 36 and calibrate "36 films", neither said why."""
    data, source = _half_linked(tmp_path)
    # By default (and so in the app), a link out of the scanned folder is refused: counted and named.
    ds = D.scan(data)
    assert len(ds) == 4 and ds.links.refused == 4 and ds.links.followed == 0
    assert ds.links.refused_example is not None and ds.links.refused_example.startswith(str(data))
    assert str(data.resolve()) in ds.links.allowed
    assert len(ds.problems) == 4 and all("a link to a file outside" in reason for _, reason in ds.problems)
    assert "4 film(s) are symbolic links, refused and not counted; e.g." in ds.links.lines()[0]
    assert "a link to a file outside" in ds.links.lines()[0]
    # The command line follows every link, and counts them.
    ds = D.scan(data, follow_links=True)
    assert len(ds) == 8 and ds.links.followed == 4 and ds.links.refused == 0 and not ds.problems
    assert "4 film(s) are symbolic links, followed" in ds.links.lines()[0]
    # The app passes its roots: links that stay inside them are followed, the others refused.
    assert len(D.scan(data, allowed_roots=[source])) == 8
    other = tmp_path / "other"
    other.mkdir()
    assert D.scan(data, allowed_roots=[other]).links.refused == 4
    # The summary carries the counts, in to_dict too.
    summary = D.summarize(data)
    assert summary.to_dict()["links"]["refused"] == 4 and summary.n_images == 4
    assert D.summarize(data, follow_links=True).to_dict()["links"]["followed"] == 4


def test_a_folder_of_links_only_says_so(tmp_path: Path) -> None:
    """The probe: every film a link, and the scan said "no labelled images found … found: NORMAL/, PNEUMONIA/"."""
    source = make_folder(tmp_path / "elsewhere", n_per_class=3, size=40)
    data = tmp_path / "data"
    for film in source.glob("*/*.png"):
        (data / film.parent.name).mkdir(parents=True, exist_ok=True)
        (data / film.parent.name / film.name).symlink_to(film)
    with pytest.raises(
        D.DatasetError, match=r"6 film\(s\) there are symbolic links, refused \(e\.g\. .*: a link to a file outside"
    ):
        D.scan(data)
    assert len(D.scan(data, follow_links=True)) == 6


def test_a_linked_class_folder_is_a_link_too(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "elsewhere", n_per_class=3, size=40)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(source / "NORMAL", data / "NORMAL")
    (data / "PNEUMONIA").symlink_to(source / "PNEUMONIA", target_is_directory=True)
    ds = D.scan(data)
    assert ds.links.refused == 3 and set(ds.frame["class_name"]) == {"NORMAL"}
    ds = D.scan(data, follow_links=True)
    assert ds.links.followed == 3 and len(ds) == 6


def test_manifest_links_follow_the_same_rule(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "m", n_per_class=2, size=40)
    secret = make_folder(tmp_path / "elsewhere", n_per_class=1, size=40)
    (root / "link.png").symlink_to(next((secret / "NORMAL").iterdir()))
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.glob("*/*.png"))] + ["link.png,NORMAL"]
    (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = D.scan(root / "list.csv")
    assert len(ds) == 4 and ds.links.refused == 1 and ds.links.refused_example == str(root / "link.png")
    ds = D.scan(root / "list.csv", follow_links=True)
    assert len(ds) == 5 and ds.links.followed == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a link to another user needs root")
def test_the_command_line_follows_only_links_its_user_made(tmp_path: Path) -> None:
    """A link another user made in a shared folder (to the runner's own files, say) is not followed out of the
    folder, even by the command line; one that stays inside the folder is."""
    data, _ = _half_linked(tmp_path)
    foreign = sorted(p for p in data.glob("*/*.png") if p.is_symlink())[0]
    os.lchown(foreign, 12345, 12345)
    inside = data / "NORMAL" / "inside.png"
    inside.symlink_to(sorted(p for p in (data / "NORMAL").iterdir() if not p.is_symlink())[0])
    os.lchown(inside, 12345, 12345)
    ds = D.scan(data, follow_links=True)
    assert ds.links.followed == 4 and ds.links.refused == 1 and ds.links.refused_example == str(foreign)
    assert ds.problems == [(str(foreign), "a link made by another user (uid 12345); refused, not opened")]


def test_collection_still_offers_every_name_imported_from_it() -> None:
    """pneumo.data.collection gathers the names of the modules it was divided into; every name the project takes
    from it (imported by name, or read as an attribute of the module imported as D) is there, and is the very
    object its own module defines (a cache cleared through one is cleared for both)."""
    import re

    from tests.conftest import ROOT

    used: set[str] = set()
    for folder in ("pneumo", "pages", "tests", "bench"):
        for source in (ROOT / folder).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            for listed, line in re.findall(r"from pneumo\.data\.collection import (?:\(([^)]*)\)|([\w ,]+))", text):
                used |= {n.strip() for n in (listed or line).split(",") if n.strip()}
            if re.search(r"from pneumo\.data import collection as D\b", text):
                used |= set(re.findall(r"\bD\.([A-Za-z_]\w*)", text))
    assert {"scan", "read_item", "summarize", "split", "_open_npz", "link_lines"} <= used  # the search finds them
    missing = sorted(n for n in used if not hasattr(D, n))
    assert not missing, missing
    for name in D.__all__:
        value = getattr(D, name)
        home = getattr(value, "__module__", None)
        if home and home.startswith("pneumo.data.") and home != D.__name__:
            assert getattr(__import__(home, fromlist=[name]), name) is value, name
