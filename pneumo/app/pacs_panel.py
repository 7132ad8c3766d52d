"""The Predict page's PACS source: the deployment's DICOMweb settings and a study list to screen from."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from pneumo.app import auth, texts
from pneumo.app.ui import plain, progress_bar, settings
from pneumo.integrations import pacs
from pneumo.model.loading import LoadedModel

BACKOFF_KEY = "pacs-backoff"  # (failures in a row, monotonic time of the next search, the last failure's line)
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0


def ui_pacs_config() -> Any:
    """The deployment's PACS (secrets.toml [pneumo.pacs] or PNEUMO_PACS_*), never a visitor's URL; None
    when none is configured or its settings are unusable (said once, as an error box)."""
    try:
        return pacs.PacsConfig.load(_secrets())
    except ValueError as exc:
        st.error(f"The configured PACS cannot be used: {plain(exc)}", icon=":material/error:")
        return None


def _secrets() -> dict[str, Any]:
    try:
        return {k: v for k, v in st.secrets.items()}
    except Exception:  # no secrets.toml
        return {}


def pacs_source(config: Any, loaded: LoadedModel, model_key: str) -> Any:
    """Predict's "From PACS" source: search the configured server's studies, screen the ticked ones
    through the one prediction path, and send the results back (with the deployment's permission).
    Returns the screening run (kept in this session) or None before one."""
    try:
        server = pacs.Pacs.from_config(config)
    except ValueError as exc:  # an unusable URL or timeout in the deployment's settings
        st.error(f"The configured PACS cannot be used: {plain(exc)}", icon=":material/error:")
        return None
    st.caption(
        f"PACS: {plain(pacs.redact(config.url))}"
        + (" · patient identifiers shown" if config.show_identifiers else " · no patient identifiers shown")
    )
    cols = st.columns([2, 2, 2])
    since = cols[0].text_input("Studies since (YYYYMMDD)", key="pacs-since", placeholder="any date")
    accession = cols[1].text_input("Accession number", key="pacs-accession")
    unscreened = cols[2].toggle("Not yet screened by this model", key="pacs-unscreened")
    # A busy or failing server is asked again only after a wait that doubles with each failure (capped): every
    # widget change reruns this page, and each rerun would otherwise send it the same search at once.
    failures, retry_at, last_error = st.session_state.get(BACKOFF_KEY, (0, 0.0, ""))
    waiting = retry_at - time.monotonic()
    if waiting > 0:
        st.error(f"{plain(last_error)} — the PACS is asked again in {waiting:.0f} s.", icon=":material/cloud_off:")
        if not st.button("Try again now", key="pacs-retry"):
            return None
    try:
        rows = pacs.list_studies(
            server,
            show_identifiers=config.show_identifiers,
            since=since or None,
            accession=accession or None,
            unscreened_by=loaded if unscreened else None,
            limit=200,
        )
    except pacs.PacsError as exc:
        failures += 1
        wait = pacs.backoff_delay(BACKOFF_BASE_S, failures - 1, cap=BACKOFF_CAP_S)
        st.session_state[BACKOFF_KEY] = (failures, time.monotonic() + wait, str(exc))
        st.error(f"{plain(exc)} — the PACS is asked again in {wait:.0f} s.", icon=":material/cloud_off:")
        return None
    except ValueError as exc:  # the visitor's search (a date that is not one): nothing to back off from
        st.error(plain(exc), icon=":material/error:")
        return None
    st.session_state.pop(BACKOFF_KEY, None)
    if not rows:
        st.info("No studies match.")
        return None
    table = pd.DataFrame(rows)
    picked = st.dataframe(
        table.drop(columns=[c for c in ("study_uid",) if c in table]),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="multi-row",
        key=f"pacs-studies:{hash(tuple(table.get('study_uid', [])))}",
    )
    chosen = [rows[i]["study_uid"] for i in picked.selection.rows] if picked and picked.selection else []
    # The run belongs to the model and the operating point in force: its decisions were made at that threshold, and
    # a site point picked in the sidebar afterwards must not show them under its own.
    run_key = f"pacs-run:{model_key}:{loaded.operating_point}:{loaded.threshold!r}"
    if st.button(
        texts.screen_label(len(chosen)),
        disabled=not chosen,
        type="primary",
        key="pacs-screen",
    ):
        bar, update = progress_bar("Screening studies…")
        try:
            st.session_state[run_key] = pacs.screen_studies(
                server, loaded, chosen, keep_pixels=True, progress=lambda d, t, _r: update(d, t), log=True
            )
        finally:
            bar.empty()
    run = st.session_state.get(run_key)
    if run is None:
        st.caption("Tick studies and screen them; the readings appear below as a worklist.")
        return None
    if run.error:
        st.error(plain(run.error), icon=":material/cloud_off:")
    if run.log_note:
        st.warning(plain(run.log_note), icon=":material/database:")
    skipped = [r for r in run.results if r.status in (pacs.SKIPPED, pacs.ALREADY)]
    if skipped:
        st.caption(texts.skipped_line([f"{r.path}: {r.skipped or r.status}" for r in skipped]))
    allowed = auth.can(auth.SEND_TO_PACS) and config.may_send(settings().allow_changes)
    unsent = [r for r in run.results if r.status == pacs.SCREENED and not r.stored]
    if (
        st.button(
            "Send results to PACS",
            disabled=not (allowed and unsent),
            key="pacs-send",
            help=None if allowed else "Sending is switched off in this deployment.",
        )
        and allowed
    ):
        errors = pacs.send_results(server, loaded, run.results)
        stored = sum(bool(r.stored) for r in unsent)
        st.session_state[f"{run_key}:sent"] = (
            f"Stored the results of {stored} film(s) in their studies." if not errors else None,
            errors,
        )
    message, errors = st.session_state.get(f"{run_key}:sent", (None, []))
    for line in errors:
        st.error(plain(line), icon=":material/cloud_off:")
    if message:
        st.success(message, icon=":material/cloud_done:")
    return run
