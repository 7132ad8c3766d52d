"""Shared fixtures: synthetic X-ray-like images on disk, and a tiny trained model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session", autouse=True)
def records_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One readings database for the whole run, outside the checkout: the commands and the app write readings
    and audit events, and a test never leaves runs/pneumo.db behind. A test that needs its own sets its own."""
    url = f"sqlite:///{tmp_path_factory.mktemp('records') / 'pneumo.db'}"
    before = os.environ.get("PNEUMO_DATABASE_URL")
    os.environ["PNEUMO_DATABASE_URL"] = url
    yield url
    if before is None:
        os.environ.pop("PNEUMO_DATABASE_URL", None)
    else:
        os.environ["PNEUMO_DATABASE_URL"] = before


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[], str]]:
    """A PostgreSQL server of this run's own, from Debian's postgresql (make db-deps): initdb in a temporary folder,
    listening on 127.0.0.1 only (a free port; trust authentication, no data worth a password), stopped at the end
    (pg_ctl stop -m fast) and its folder removed. Yields a function that creates an empty database and gives its
    URL (postgresql+psycopg://, psycopg 3). PostgreSQL refuses to run as root, so as root (CI) the server runs as
    the `postgres` account the package creates; otherwise as the current user."""
    import glob
    import importlib.util
    import shutil
    import subprocess
    import tempfile

    def version(initdb: str) -> tuple[int, ...]:  # /usr/lib/postgresql/<ver>/bin/initdb
        ver = Path(initdb).parent.parent.name
        return tuple(int(p) for p in ver.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    require(found, "PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin/initdb (make db-deps)")
    require(importlib.util.find_spec("psycopg"), "psycopg 3 is not installed (pip install -e '.[dev]')")
    import psycopg

    bin_dir = Path(found[-1]).parent
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    prefix: list[str] = []
    if as_root:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            require(False, "running as root, and there is no `postgres` account to run PostgreSQL as (make db-deps)")
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
    # Not under pytest's tmp_path: its folders are private to this user, and the server's account must enter them.
    root = Path(tempfile.mkdtemp(prefix="pneumo-pg-"))
    if as_root:
        os.chown(root, account.pw_uid, account.pw_gid)
    data, log = root / "data", root / "server.log"

    def pg(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(bin_dir / tool), *args]
        if as_root and not prefix:  # no runuser: su, with the command quoted for its shell
            import shlex

            command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
        return subprocess.run([*prefix, *command], cwd=root, capture_output=True, text=True, timeout=120)

    def failed(what: str, done: subprocess.CompletedProcess[str]) -> None:
        server = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"PostgreSQL {what} failed ({done.returncode}): {done.stderr[-2000:]}{server}", pytrace=False)

    port = free_ports()[0]
    try:
        done = pg("initdb", "-D", str(data), "-U", "pneumo", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        if done.returncode:
            failed("initdb", done)
        # Durability is no concern of a server that lives for one run: fsync and friends off make it faster. Its
        # time zone is UTC-10, so a time given back in the session's zone rather than UTC would show (on another day).
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
            "-c TimeZone=Pacific/Honolulu"
        )
        done = pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(data), "-l", str(log), "-o", options)
        if done.returncode:
            failed("pg_ctl start", done)
        admin = f"host=127.0.0.1 port={port} user=pneumo dbname=postgres"
        count = 0

        def create() -> str:
            nonlocal count
            count += 1
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f"CREATE DATABASE pneumo_{count}")
            return f"postgresql+psycopg://pneumo@127.0.0.1:{port}/pneumo_{count}"

        yield create
    finally:
        if (data / "postmaster.pid").exists():  # started, or half-started (pg_ctl start gave up waiting)
            pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(data))
        shutil.rmtree(root, ignore_errors=True)


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


# Debian's Chromium, driven by Playwright (never a downloaded browser), for the tests marked browser.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module (a module's chromium fixture checks it is installed first)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
