"""Who is using the app and what they may do: sign-in through Streamlit's OpenID Connect (st.login), roles from the
deployment's secrets, and the checks the entry point and the pages call.

Two modes, chosen by the secrets:

- **Sign-in** (an `[auth]` section, Streamlit's OpenID Connect settings): every visitor signs in before anything is
  shown. The account's role comes from `[pneumo.roles]` (pneumo.app.settings.parse_roles): a reader reads films and
  gives verdicts; an analyst also explores collections, trains and tunes thresholds; an admin also applies operating
  points and manages the records database. Readings, verdicts and events carry the account (its e-mail address).
- **No sign-in** (no `[auth]`): as before roles existed. Every page opens; what changes shared state follows the
  deployment's allow_changes alone (on for `make run`, a local single-user app whose user is the account running
  it; off for a deployment serving others, whose visitors are anonymous: "app visitor").

In both, an action that changes shared state (training, saving an operating point, the database) also needs
allow_changes: the deployment's switch stays the upper bound, and the roles say who, among those signed in, may use
what it allows. The rules are plain functions of the settings and the identity claims (Access, access_for); the
Streamlit glue below them reads st.user and the secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from pneumo.app.settings import ADMIN, ANALYST, READER, ROLES, AppSettings
from pneumo.app.ui import plain
from pneumo.integrations.records import LOGIN, RecordsError, database_url, log_event
from pneumo.integrations.records import current_user as account_user
from pneumo.integrations.records.audit import OK, REFUSED
from pneumo.integrations.records.readings import ENV_USER

# What a page or a button asks for. Each action needs a role (the lowest that may do it); those marked as changing
# shared state also need the deployment's allow_changes.
READ = "read"  # Overview, Predict, Monitor: read films, see the model and its record
VERDICT = "verdict"  # agree or disagree with a reading
SEND_TO_PACS = "send_to_pacs"  # store a reading's results in the PACS (its own switch: [pneumo.pacs] allow_send)
EXPLORE = "explore"  # the Dataset Explorer, its label audit and shortcut audit
REVIEW_LABELS = "review_labels"  # save the label review's verdicts beside a collection
TUNE = "tune"  # the Threshold page: figures at any threshold, a site's point computed
TRAIN = "train"  # the Train page: start and stop runs
APPLY_OPERATING_POINT = "apply_operating_point"  # save a threshold or a site point into a model's card
MANAGE_DATABASE = "manage_database"  # the records database: import verdicts, exports, upkeep

# What only a known person may do: a signed-in account, the user of a local app (allow_changes on), or the one user
# a deployment names (PNEUMO_USER). A verdict
# feeds the Monitor's alerts and calibrate --from-verdicts, so an anonymous visitor gives none.
NAMED_ONLY = frozenset({VERDICT})

ACTIONS: dict[str, tuple[str, bool, str]] = {  # action -> (lowest role, changes shared state, in words)
    READ: (READER, False, "read films"),
    VERDICT: (READER, False, "give verdicts"),
    SEND_TO_PACS: (READER, False, "send results to the PACS"),
    EXPLORE: (ANALYST, False, "explore collections"),
    REVIEW_LABELS: (ANALYST, True, "save label reviews"),
    TUNE: (ANALYST, False, "tune thresholds"),
    TRAIN: (ANALYST, True, "train models"),
    APPLY_OPERATING_POINT: (ADMIN, True, "apply operating points"),
    MANAGE_DATABASE: (ADMIN, True, "manage the database"),
}

# What opening each page needs (its role only: a page that also changes things shows them switched off).
PAGE_ACTIONS: dict[str, str] = {
    "pages/home.py": READ,
    "pages/predict.py": READ,
    "pages/threshold.py": TUNE,
    "pages/explore.py": EXPLORE,
    "pages/train.py": TRAIN,
    "pages/monitor.py": READ,
}

SWITCHED_OFF = (
    "Changes are switched off in this deployment (set PNEUMO_ALLOW_CHANGES=1 or [pneumo] allow_changes = true)."
)
ANONYMOUS = "app visitor"
LOGGED_KEY = "_auth_login_logged"  # session state: the account whose sign-in this session has recorded
_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")


def _action(action: str) -> tuple[str, bool, str]:
    try:
        return ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})") from None


def role_allows(role: str | None, action: str) -> bool:
    """Whether a role may do an action by rank alone (None, no role: nothing)."""
    needed = _action(action)[0]
    return role is not None and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Access:
    """Who this session is and what they may do."""

    user: str  # recorded on readings, verdicts and events ("" before sign-in)
    name: str  # shown in the sidebar
    role: str | None  # None: not signed in yet, or an account with no role
    sign_in: bool  # the deployment has sign-in ([auth])
    signed_in: bool
    allow_changes: bool

    def role_allows(self, action: str) -> bool:
        return role_allows(self.role, action)

    def can(self, action: str) -> bool:
        """The role allows it, and so does the deployment when it changes shared state."""
        return self.refusal(action) is None

    def refusal(self, action: str) -> str | None:
        """Why this session may not do an action (a button's help text), or None when it may."""
        needed, changes, words = _action(action)
        if self.sign_in and not self.signed_in:
            return f"Sign in to {words}."
        if not self.role_allows(action):
            if self.role is None:
                return "Your account has no role in this deployment: ask its administrator for one."
            return f"Your role ({self.role}) cannot {words}: that needs the {needed} role."
        if changes and not self.allow_changes:
            return SWITCHED_OFF
        if action in NAMED_ONLY and not self.signed_in and not self.allow_changes and self.user in (None, ANONYMOUS):
            return SWITCHED_OFF  # an anonymous visitor of a public deployment: nobody to answer for it
        return None

    def may_open(self, page: str) -> bool:
        """Whether a page (its path, as in PAGE_ACTIONS) opens for this session; a page not listed opens for readers."""
        return self.role_allows(PAGE_ACTIONS.get(page, READ))

    def page_refusal(self, page: str, title: str) -> str | None:
        if self.may_open(page):
            return None
        needed = _action(PAGE_ACTIONS.get(page, READ))[0]
        if self.role is None:
            return "Your account has no role in this deployment: ask its administrator for one."
        return f"Your role ({self.role}) cannot open this page: {title} needs the {needed} role."


def account_of(claims: Mapping[str, Any]) -> str:
    """The account a signed-in user's identity claims name: the e-mail address, else the subject id (at most 200
    characters, as the records keep). Never preferred_username: OpenID Connect says it may change and need not be
    unique, so it must not decide a role."""
    for key in ("email", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return "signed-in user"


def role_of(claims: Mapping[str, Any], roles: Mapping[str, str], default_role: str | None) -> str | None:
    """The role of a signed-in account: the one [pneumo.roles] lists it under, else the default role.

    An e-mail address the provider itself says it has not verified (email_verified false) is not matched against
    the list: anybody could claim it at a provider that lets them type it in. Such an account has the default role.
    """
    if "email" in claims and claims.get("email_verified") is not True:
        return default_role  # unverified, or not said (some providers omit the claim): never a listed role
    return roles.get(account_of(claims).lower(), default_role)


def access_for(
    cfg: AppSettings, user_info: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> Access:
    """This session's access from the settings and, with sign-in, the identity claims (st.user)."""
    if not cfg.sign_in:
        environ = {} if environ is None else environ
        # A local single-user app (make run switches changes on) is its account's; a deployment serving others
        # without sign-in cannot know who is reading. PNEUMO_USER names the user in both.
        user = account_user(environ) if cfg.allow_changes else str(environ.get(ENV_USER) or ANONYMOUS)[:200]
        return Access(user, user, ADMIN, sign_in=False, signed_in=False, allow_changes=cfg.allow_changes)
    claims = dict(user_info or {})
    if not claims.get("is_logged_in"):
        return Access("", "", None, sign_in=True, signed_in=False, allow_changes=cfg.allow_changes)
    user = account_of(claims)
    name = claims.get("name")
    shown = name.strip() if isinstance(name, str) and name.strip() else user
    role = role_of(claims, cfg.roles, cfg.default_role)
    return Access(user, shown, role, sign_in=True, signed_in=True, allow_changes=cfg.allow_changes)


def login_providers(auth_section: Mapping[str, Any]) -> list[str | None]:
    """The providers a visitor may sign in with: None for the one configured in [auth] itself, then each named
    [auth.NAME] section (Streamlit's st.login(provider))."""
    found: list[str | None] = [None] if any(k in auth_section for k in _PROVIDER_KEYS) else []
    for name, value in auth_section.items():
        if isinstance(value, Mapping) and any(k in value for k in _PROVIDER_KEYS):
            found.append(str(name))
    return found


# ------------------------------------------------------------------------------------------ Streamlit glue


def _secrets() -> dict[str, Any]:
    try:
        return dict(st.secrets)
    except Exception:  # no secrets.toml: no sign-in, defaults and the environment only
        return {}


def _user_info() -> dict[str, Any]:
    try:
        return {k: v for k, v in st.user.items() if k != "tokens"}
    except Exception:  # no script run context
        return {}


def current_access() -> Access:
    """This session's access (the settings are read afresh: a changed secrets file applies on the next run)."""
    cfg = AppSettings.load(_secrets())
    return access_for(cfg, _user_info() if cfg.sign_in else None, os.environ)


def current_user() -> str:
    """Who is using the app, for readings, verdicts and events: the signed-in account, else (no sign-in) the account
    running a local app or PNEUMO_USER, else "app visitor"."""
    return current_access().user or ANONYMOUS


def current_role() -> str | None:
    return current_access().role


def can(action: str) -> bool:
    """Whether this session may do an action now (its role, and allow_changes for a change)."""
    return current_access().can(action)


def refusal(action: str) -> str | None:
    """Why this session may not do an action (for a disabled button's help), or None."""
    return current_access().refusal(action)


def require(action: str) -> Access:
    """Stop the page here, with the reason, unless this session may do the action; its access when it may."""
    access = current_access()
    reason = access.refusal(action)
    if reason is not None:
        st.error(reason, icon=":material/lock:")
        st.stop()
    return access


def require_role(role: str) -> Access:
    """Stop the page here unless this session's role is `role` or above."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    access = current_access()
    if access.role is None or ROLES.index(access.role) < ROLES.index(role):
        reason = f"Your role ({access.role or 'none'}) cannot do this: it needs the {role} role."
        st.error(reason, icon=":material/lock:")
        st.stop()
    return access


def gate() -> Access:
    """The entry point's gate, before navigation: with sign-in, a visitor who has not signed in sees the sign-in
    screen and nothing else, and an account with no role is refused; the sign-in is recorded once per session."""
    secrets = _secrets()
    try:
        cfg = AppSettings.load(secrets)
    except ValueError as exc:  # a broken roles table refuses everyone rather than guessing
        st.error(f"This deployment's settings cannot be used: {plain(exc)}", icon=":material/error:")
        st.stop()
    access = access_for(cfg, _user_info() if cfg.sign_in else None, os.environ)
    if not access.sign_in:
        return access
    if not access.signed_in:
        _alone(_sign_in_screen(login_providers(secrets.get("auth") or {})), "Sign in")
    _record_sign_in_once(access, secrets)
    if access.role is None:
        _alone(_no_role_screen(access), "No access")
    return access


def _alone(screen: Any, title: str) -> None:
    """Run one screen as the app's only page (the navigation hidden), and stop: no other page is reachable."""
    st.navigation([st.Page(screen, title=title, url_path="sign-in", default=True)], position="hidden").run()
    st.stop()


def _sign_in_screen(providers: Sequence[str | None]) -> Any:
    def sign_in() -> None:
        st.title("pneumo — chest X-ray pneumonia screening")
        st.markdown("Sign in to use this deployment.")
        if not providers:
            st.error("Sign-in is configured ([auth]) but names no provider (client_id, server_metadata_url).")
            return
        for provider in providers:
            label = "Log in" if len(providers) == 1 else f"Log in with {provider or 'the default provider'}"
            if st.button(label, type="primary", icon=":material/login:", key=f"login:{provider}"):
                try:
                    st.login(provider)
                except Exception as exc:  # Authlib missing, or an incomplete [auth] section: say which
                    st.error(f"Sign-in is not available: {plain(exc)}", icon=":material/error:")
        st.caption("Research use only — not a medical device.")

    return sign_in


def _no_role_screen(access: Access) -> Any:
    def no_role() -> None:
        st.title("No access")
        st.error(
            f"Signed in as {plain(access.user)}, an account with no role in this deployment: ask its administrator "
            "to add it to [pneumo.roles].",
            icon=":material/lock:",
        )
        if st.button("Log out", icon=":material/logout:", key="logout"):
            st.logout()

    return no_role


def _record_sign_in_once(access: Access, secrets: Mapping[str, Any]) -> None:
    """A LOGIN event the first time a session runs signed in (refused when the account has no role)."""
    if st.session_state.get(LOGGED_KEY) == access.user:
        return
    st.session_state[LOGGED_KEY] = access.user
    try:
        log_event(
            LOGIN,
            "app",
            OK if access.role is not None else REFUSED,
            user=access.user,
            details={"role": access.role or "none", "name": access.name[:200]},
            url=database_url(secrets=secrets),
        )
    except RecordsError as exc:
        st.toast(f"This sign-in was not recorded: {plain(exc)}", icon=":material/database:")


def user_panel(access: Access) -> None:
    """The sidebar's user line with sign-in: who is signed in, their role, and Log out."""
    if not access.signed_in:
        return
    with st.sidebar:
        st.markdown(f"Signed in as **{plain(access.name)}**")
        st.caption(f"{plain(access.user)} · {access.role or 'no role'}")
        if st.button("Log out", icon=":material/logout:", key="logout"):
            st.logout()


def refuse_page(access: Access, page: str, title: str) -> None:
    """What a page this session's role may not open shows instead of the page (its file never runs)."""
    st.title(title)
    st.error(access.page_refusal(page, title) or "This page is not available.", icon=":material/lock:")
