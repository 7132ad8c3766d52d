"""Shared fixtures: synthetic X-ray-like images on disk, and a tiny trained model."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import pytest
from PIL import Image

SHARED_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray" / "train"
ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """CI=true, as GitHub Actions, GitLab CI and most runners set it."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require(condition: object, reason: str) -> None:
    """Go on only where `condition` holds. Otherwise the test is skipped with `reason`, except on CI
    (CI=true), where it fails: a runner that lost the shared data, Chromium or Orthanc would otherwise
    report green while the tests that need them never ran."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure there, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_orthanc() -> None:
    """Orthanc with its DICOMweb plugin (Debian's packages), for the PACS round trip."""
    from pneumo.integrations.pacs_server import find_orthanc

    require(find_orthanc() is not None, "Orthanc with its DICOMweb plugin is not installed (make pacs-deps)")


@pytest.fixture
def shared_train() -> Path:
    """The shared training folder beside this checkout (../shared/data/chest_xray/train)."""
    require(SHARED_TRAIN.is_dir(), f"shared training data not found at {SHARED_TRAIN}")
    return SHARED_TRAIN


def synthetic_xray(
    rng: np.random.Generator, size: int = 64, pneumonia: bool = False, blob: tuple[int, int] | None = None
) -> np.ndarray:
    """A chest-like picture: bright body, two dark lung fields, and for pneumonia a bright opacity."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.1 * rng.standard_normal((size, size)) * 0.3
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        img[lung] -= 0.35
    if pneumonia:
        by, bx = blob if blob else (rng.uniform(0.35, 0.65), rng.choice([0.3, 0.7]))
        img += 0.5 * np.exp(-(((xx - bx) ** 2 + (yy - by) ** 2) / (2 * 0.06**2)))
    return np.clip(img, 0, 1).astype(np.float32)


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def make_folder(root: Path, n_per_class: int = 12, size: int = 64, seed: int = 0, images_per_patient: int = 2) -> Path:
    """NORMAL/ and PNEUMONIA/ with Kermany-style names: several images per patient."""
    rng = np.random.default_rng(seed)
    for i in range(n_per_class):
        patient = i // images_per_patient
        write_png(root / "NORMAL" / f"IM-{patient:04d}-{i:04d}.png", synthetic_xray(rng, size))
        kind = "bacteria" if i % 3 else "virus"
        write_png(root / "PNEUMONIA" / f"person{patient}_{kind}_{i}.png", synthetic_xray(rng, size, pneumonia=True))
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def xray_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "xrays")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact_cnn trained for one epoch on 80 synthetic images: a real run directory."""
    from pneumo.training.job import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny")
    data = make_folder(root / "data", n_per_class=40, size=64, images_per_patient=2)
    config = TrainConfig(data=str(data), image_size=64, epochs=1, batch_size=16, val_fraction=0.25, augmentation="none")
    train(config, root / "run")
    return root / "run"


def free_ports(n: int = 1) -> list[int]:
    """n loopback ports nothing listens on, below the kernel's ephemeral range: a server the tests start
    (streamlit, Orthanc, a training worker) can never find its port taken as some connection's source port,
    and a worker dialling a peer that is not listening yet can never connect to itself."""
    import random
    import socket

    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    ports: list[int] = []
    candidates = range(max(low - 8000, 1024), low)
    for port in random.Random().sample(candidates, min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports below {low}")
