"""Sign-in as a user sees it: headless Chromium (Debian's) against `streamlit run` with an
[auth] section in the secrets, and a real OpenID Connect provider on a loopback port (oidc-provider-mock, whose
login form lets the test pick the account). Signing in, the name in the sidebar, logging out, and a reader refused
an analyst's page."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, ROOT, free_ports, require

ANALYST = {"sub": "alice@example.org", "email": "alice@example.org", "email_verified": True, "name": "Alice Analyst"}
READER = {"sub": "rita@example.org", "email": "rita@example.org", "email_verified": True, "name": "Rita Reader"}

pytestmark = pytest.mark.browser


def _wait_for(url: str, what: str, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not start; log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """oidc-provider-mock on a free loopback port, with the two accounts offered as buttons on its login form."""
    require(CHROMIUM.exists(), f"Debian chromium is not installed at {CHROMIUM} (make test installs it)")
    log = tmp_path_factory.mktemp("oidc") / "oidc.log"
    port = free_ports()[0]
    cmd = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)]
    for claims in (ANALYST, READER):
        cmd += ["--user-claims", json.dumps(claims)]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/.well-known/openid-configuration", "oidc-provider-mock", log, proc)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, provider: str, records_database: str) -> Iterator[str]:
    """`streamlit run` in a working directory of its own whose .streamlit/secrets.toml configures sign-in against the
    provider, and names Alice an analyst and Rita a reader. Streamlit reads secrets from the working directory's
    .streamlit/ and from the one beside the script (which wins); --secrets.files pins this file alone, so a
    developer's own secrets.toml in the checkout changes nothing here."""
    work = tmp_path_factory.mktemp("auth-app")
    port = free_ports()[0]
    url = f"http://127.0.0.1:{port}"
    secrets_file = work / ".streamlit" / "secrets.toml"
    secrets_file.parent.mkdir()
    secrets_file.write_text(
        f"""[auth]
redirect_uri = "{url}/oauth2callback"
cookie_secret = "{secrets.token_hex(32)}"
client_id = "pneumo-test"
client_secret = "{secrets.token_hex(16)}"
server_metadata_url = "{provider}/.well-known/openid-configuration"

[pneumo.roles]
analyst = ["{ANALYST["email"]}"]
reader = ["{READER["email"]}"]
"""
    )
    env = {k: v for k, v in os.environ.items() if k != "PNEUMO_ALLOW_CHANGES"}
    env.update(
        PNEUMO_RUNS_DIR=str(work / "runs"),
        PNEUMO_CACHE_DIR=str(work / "cache"),
        PNEUMO_DATA_ROOTS="",
        PNEUMO_DATABASE_URL=records_database,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "streamlit_app.py"),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--secrets.files",
        str(secrets_file),
    ]
    log = work / "streamlit.log"
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for(f"{url}/_stcore/health", "streamlit", log, proc)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    """A fresh context per test: no identity cookie carried over."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()


def _settle(page: object) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=60_000)


def _goto(page: object, url: str) -> None:
    page.goto(url)
    page.get_by_role("heading", level=1).first.wait_for()
    _settle(page)


def _sign_in(page: object, app: str, provider: str, account: dict) -> None:
    """From the app's sign-in screen through the provider's login form (the account's button) and back."""
    _goto(page, app)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{provider}/**")
    page.get_by_role("button", name=account["sub"], exact=True).click()
    page.wait_for_url(f"{app}/**")
    page.get_by_test_id("stSidebar").get_by_text(account["name"]).wait_for()
    _settle(page)


def _menu(page: object) -> list[str]:
    """The menu's page titles (each link's last line: its icon's name comes first)."""
    return [t.strip().splitlines()[-1] for t in page.get_by_test_id("stSidebarNav").locator("a").all_inner_texts()]


def _logins(url: str, user: str) -> list[tuple[str, str, str]]:
    from pneumo.integrations.records import iter_events, open_records

    events = iter_events(open_records(url))
    return [(e["kind"], e["outcome"], e["details"]["role"]) for e in events if e["user"] == user]


def test_sign_in_shows_the_name_and_log_out_ends_the_session(
    page: object, app: str, provider: str, records_database: str
) -> None:
    _goto(page, app)
    assert page.get_by_role("button", name="Log in").is_visible()
    assert not page.get_by_test_id("stSidebarNav").count()  # nothing of the app before sign-in
    _sign_in(page, app, provider, ANALYST)
    sidebar = page.get_by_test_id("stSidebar")
    assert sidebar.get_by_text("Signed in as").is_visible()
    assert "alice@example.org · analyst" in sidebar.inner_text()
    assert {"Overview", "Predict", "Threshold", "Dataset Explorer", "Train", "Monitor"} <= set(_menu(page))
    assert _logins(records_database, "alice@example.org") == [("login", "ok", "analyst")]
    _goto(page, f"{app}/train")  # a new session on the same identity cookie: signed in, the page itself runs
    assert page.get_by_role("heading", name="Train", level=1).is_visible()
    assert not page.get_by_text("cannot open this page").count()

    sidebar.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{provider}/**")  # the provider's end-session page (its end_session_endpoint)
    page.get_by_role("button", name="End session").click()
    page.wait_for_url(f"{app}/**")
    page.get_by_role("button", name="Log in").wait_for()
    _settle(page)
    assert not page.get_by_text("Alice Analyst").count()
    _goto(page, f"{app}/train")  # the cookie is gone: a deep link shows the sign-in screen, not the page
    assert page.get_by_role("button", name="Log in").is_visible()
    assert not page.get_by_role("heading", name="Train").count()


def test_a_reader_is_refused_the_analysts_pages(page: object, app: str, provider: str, records_database: str) -> None:
    _sign_in(page, app, provider, READER)
    assert "rita@example.org · reader" in page.get_by_test_id("stSidebar").inner_text()
    menu = _menu(page)
    assert {"Overview", "Predict", "Monitor"} <= set(menu)
    assert not {"Threshold", "Dataset Explorer", "Train"} & set(menu), menu
    for path, title in (("train", "Train"), ("threshold", "Threshold")):
        _goto(page, f"{app}/{path}")  # by its URL: the page says why, and its own code never runs
        assert page.get_by_role("heading", name=title, level=1).is_visible()
        refusal = f"Your role (reader) cannot open this page: {title} needs the analyst role."
        assert page.get_by_text(refusal).is_visible()
        assert not page.get_by_role("button", name="Start").count()
        assert not page.get_by_role("button", name="Save operating point").count()
    assert ("login", "ok", "reader") in _logins(records_database, "rita@example.org")
