"""Users and roles: the rules as plain functions, the settings they come from, and the entry
point's gate through AppTest. The sign-in itself, against a real OpenID Connect provider, is in
tests/test_auth_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pneumo.app import auth
from pneumo.app.auth import (
    APPLY_OPERATING_POINT,
    EXPLORE,
    MANAGE_DATABASE,
    READ,
    REVIEW_LABELS,
    SEND_TO_PACS,
    TRAIN,
    TUNE,
    VERDICT,
    access_for,
    login_providers,
    role_allows,
    role_of,
)
from pneumo.app.settings import ADMIN, ANALYST, READER, AppSettings, parse_roles
from pneumo.integrations.records import current_user as account_user
from tests.conftest import ROOT

AUTH = {
    "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
    "cookie_secret": "a-long-enough-random-test-secret",
    "client_id": "pneumo",
    "client_secret": "secret",
    "server_metadata_url": "http://127.0.0.1:9400/.well-known/openid-configuration",
}
ROLES_TABLE = {
    "admin": ["Alice@Example.org"],
    "analyst": ["ana@example.org", "alice@example.org"],
    "reader": ["rita@example.org"],
}


def _settings(roles: dict | None = None, *, allow_changes: bool = False, sign_in: bool = True) -> AppSettings:
    pneumo = {"roles": ROLES_TABLE if roles is None else roles, "allow_changes": allow_changes}
    secrets = {"pneumo": pneumo, **({"auth": AUTH} if sign_in else {})}
    return AppSettings.load(secrets, environ={})


def _signed_in(email: str, **claims: object) -> dict:
    return {"is_logged_in": True, "email": email, "email_verified": True, "sub": f"sub-{email}", **claims}


# ------------------------------------------------------------------------------------------ settings


def test_roles_table_is_read_case_blind_with_the_highest_role_and_a_default() -> None:
    accounts, default = parse_roles(ROLES_TABLE)
    assert accounts == {"alice@example.org": ADMIN, "ana@example.org": ANALYST, "rita@example.org": READER}
    assert default == READER  # an account nobody listed reads
    assert parse_roles({"default": "none", "analyst": "solo@example.org"}) == ({"solo@example.org": ANALYST}, None)
    assert parse_roles({"default": "Analyst"})[1] == ANALYST
    assert parse_roles(None) == ({}, READER)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"analsyt": ["a@example.org"]}, "analsyt"),  # a typo is refused, never silently ignored
        ({"admin": [3]}, "3"),
        ({"admin": [" "]}, "admin"),
        ({"admin": {"a": 1}}, "admin"),
        ({"default": "superuser"}, "superuser"),
    ],
)
def test_a_broken_roles_table_is_refused_by_name(table: dict, named: str) -> None:
    with pytest.raises(ValueError, match="pneumo.roles") as caught:
        parse_roles(table)
    assert named in str(caught.value)
    with pytest.raises(ValueError):
        AppSettings.load({"pneumo": {"roles": table}}, environ={})


def test_sign_in_is_on_exactly_when_the_secrets_have_an_auth_section() -> None:
    assert _settings().sign_in
    assert not _settings(sign_in=False).sign_in
    assert not AppSettings.load({"auth": {}}, environ={}).sign_in
    assert not AppSettings.load(None, environ={}).sign_in
    cfg = _settings()
    assert cfg.roles["alice@example.org"] == ADMIN and cfg.default_role == READER
    assert not cfg.allow_changes  # sign-in does not switch changes on: the deployment still says so


# ------------------------------------------------------------------------------------------ the rules


def test_each_role_may_do_what_the_issue_says() -> None:
    reader = {READ, VERDICT, SEND_TO_PACS}
    analyst = reader | {EXPLORE, REVIEW_LABELS, TUNE, TRAIN}
    admin = analyst | {APPLY_OPERATING_POINT, MANAGE_DATABASE}
    assert set(auth.ACTIONS) == admin
    for role, allowed in ((READER, reader), (ANALYST, analyst), (ADMIN, admin)):
        assert {a for a in auth.ACTIONS if role_allows(role, a)} == allowed, role
    assert not any(role_allows(None, a) for a in auth.ACTIONS)
    with pytest.raises(ValueError, match="unknown action"):
        role_allows(ADMIN, "launch_missiles")


def test_every_page_has_a_rule_and_readers_open_only_the_reading_pages() -> None:
    assert set(auth.PAGE_ACTIONS) == {f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py")}
    source = (ROOT / "streamlit_app.py").read_text()
    assert all(f'"{page}"' in source for page in auth.PAGE_ACTIONS)
    reader = access_for(_settings(), _signed_in("rita@example.org"))
    assert {p for p in auth.PAGE_ACTIONS if reader.may_open(p)} == {
        "pages/home.py",
        "pages/predict.py",
        "pages/monitor.py",
    }
    assert reader.page_refusal("pages/train.py", "Train") == (
        "Your role (reader) cannot open this page: Train needs the analyst role."
    )
    analyst = access_for(_settings(), _signed_in("ana@example.org"))
    assert all(analyst.may_open(p) for p in auth.PAGE_ACTIONS)


def test_signed_in_accounts_get_their_listed_role_or_the_default() -> None:
    cfg = _settings()
    alice = access_for(cfg, _signed_in("ALICE@example.org", name="Alice Admin"))
    assert (alice.user, alice.name, alice.role, alice.signed_in) == ("ALICE@example.org", "Alice Admin", ADMIN, True)
    assert access_for(cfg, _signed_in("ana@example.org")).name == "ana@example.org"  # no name claim: the account
    assert access_for(cfg, _signed_in("stranger@example.org")).role == READER
    closed = _settings({**ROLES_TABLE, "default": "none"})
    stranger = access_for(closed, _signed_in("stranger@example.org"))
    assert stranger.role is None and not stranger.can(READ)
    assert "no role" in (stranger.refusal(READ) or "")


def test_an_unverified_email_is_not_matched_against_the_list() -> None:
    roles = {"alice@example.org": ADMIN}
    assert role_of({"email": "alice@example.org", "email_verified": True}, roles, READER) == ADMIN
    # The provider says nothing (some omit the claim), or says it as text: not a verified address, not a listed role.
    assert role_of({"email": "alice@example.org"}, roles, READER) == READER
    assert role_of({"email": "alice@example.org", "email_verified": "false"}, roles, READER) == READER
    assert role_of({"email": "alice@example.org", "email_verified": False}, roles, READER) == READER
    assert role_of({"email": "alice@example.org", "email_verified": False}, roles, None) is None
    assert role_of({"sub": "u-123"}, {"u-123": ANALYST}, None) == ANALYST  # no e-mail: the subject id


def test_a_reader_is_refused_an_analysts_action_and_changes_need_the_deployments_switch() -> None:
    cfg = _settings()
    reader = access_for(cfg, _signed_in("rita@example.org"))
    assert reader.can(READ) and reader.can(VERDICT)
    assert not reader.can(TRAIN)
    assert reader.refusal(TRAIN) == "Your role (reader) cannot train models: that needs the analyst role."
    assert reader.refusal(APPLY_OPERATING_POINT) == (
        "Your role (reader) cannot apply operating points: that needs the admin role."
    )
    analyst = access_for(cfg, _signed_in("ana@example.org"))
    assert analyst.can(TUNE) and analyst.can(EXPLORE)
    assert not analyst.can(TRAIN) and analyst.refusal(TRAIN) == auth.SWITCHED_OFF  # allow_changes is off
    assert not analyst.can(APPLY_OPERATING_POINT) and "admin" in (analyst.refusal(APPLY_OPERATING_POINT) or "")
    on = _settings(allow_changes=True)
    assert access_for(on, _signed_in("ana@example.org")).can(TRAIN)
    assert not access_for(on, _signed_in("ana@example.org")).can(MANAGE_DATABASE)
    assert access_for(on, _signed_in("alice@example.org")).can(MANAGE_DATABASE)
    assert not access_for(on, _signed_in("rita@example.org")).can(TRAIN)


def test_before_sign_in_nothing_is_allowed() -> None:
    visitor = access_for(_settings(allow_changes=True), {"is_logged_in": False})
    assert (visitor.user, visitor.role, visitor.signed_in) == ("", None, False)
    assert not any(visitor.can(a) for a in auth.ACTIONS)
    assert visitor.refusal(READ) == "Sign in to read films."
    assert not access_for(_settings(), None).signed_in


def test_without_sign_in_the_app_is_as_before() -> None:
    """make run: the account running it, everything allowed; a deployment serving others: anonymous, no change."""
    local = access_for(_settings(sign_in=False, allow_changes=True), None, {"PNEUMO_USER": "dr-who"})
    assert (local.user, local.role, local.sign_in) == ("dr-who", ADMIN, False)
    assert all(local.can(a) for a in auth.ACTIONS)
    assert access_for(_settings(sign_in=False, allow_changes=True), None, {}).user == account_user({})  # the OS's
    public = access_for(_settings(sign_in=False), None, {})
    assert public.user == auth.ANONYMOUS
    assert all(public.may_open(p) for p in auth.PAGE_ACTIONS)  # every page opens, as before
    # Verdicts feed the Monitor and calibrate --from-verdicts: anonymous visitors give none.
    assert {a for a in auth.ACTIONS if public.can(a)} == {READ, SEND_TO_PACS, EXPLORE, TUNE}
    assert public.refusal(VERDICT) == auth.SWITCHED_OFF
    assert public.refusal(TRAIN) == auth.SWITCHED_OFF
    assert access_for(_settings(sign_in=False), None, {"PNEUMO_USER": "kiosk"}).user == "kiosk"


def test_login_providers_are_the_default_and_each_named_section() -> None:
    assert login_providers(AUTH) == [None]
    named = {"redirect_uri": "x", "cookie_secret": "y", "google": {"client_id": "g"}, "okta": {"client_id": "o"}}
    assert login_providers(named) == ["google", "okta"]
    assert login_providers({"redirect_uri": "x", "cookie_secret": "y"}) == []


# ------------------------------------------------------------------------------------------ the gate (AppTest)


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PNEUMO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", "")
    monkeypatch.delenv("PNEUMO_ALLOW_CHANGES", raising=False)
    return tmp_path


def _app(user: dict, roles: dict) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.secrets["auth"] = AUTH
    at.secrets["pneumo"] = {"roles": roles}
    at.user = user
    return at.run()


def test_a_visitor_who_has_not_signed_in_sees_the_sign_in_screen_alone(app_env: Path) -> None:
    at = _app({"is_logged_in": False}, ROLES_TABLE)
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ["Log in"]
    assert not at.sidebar.selectbox  # no model or data pickers: nothing of the app runs before sign-in
    assert "Overview" not in [t.value for t in at.title]


def test_an_account_with_no_role_is_refused_and_its_sign_in_recorded(app_env: Path, records_database: str) -> None:
    from pneumo.integrations.records import iter_events, open_records

    at = _app({"is_logged_in": True, "email": "eve@example.org", "name": "Eve"}, {**ROLES_TABLE, "default": "none"})
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "No access"
    assert "no role" in at.error[0].value and [b.label for b in at.button] == ["Log out"]
    at.run()  # a rerun records nothing more
    events = [e for e in iter_events(open_records(records_database)) if e["user"] == "eve@example.org"]
    assert [(e["kind"], e["outcome"], e["details"]["role"]) for e in events] == [("login", "refused", "none")]
