"""Orthanc plugin script (Debian's orthanc-python): each study is screened by pneumo as it becomes stable, no polling.

pacs_server.start_orthanc(screen_on_arrival=...) copies this file beside Orthanc's configuration and names it as the
PythonScript. On STABLE_STUDY the callback only queues the study's Orthanc id; one worker thread runs
`python -m pneumo pacs screen --url URL --push --json --study UID ...` as a child process, the studies that became
stable together in one run, so Orthanc never waits on a model and a crash of the model never takes Orthanc down. A run
that fails stores nothing for the films it failed on: they stay unscreened, and `pacs screen` (or the next change to
the study) reads them again. Settings come from the "PneumoOnChange" section of Orthanc's configuration.

Standard library only: Orthanc's Python is the system's, without pneumo's dependencies; the child process is pneumo's
own interpreter.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

CONFIG_SECTION = "PneumoOnChange"
FILM_MODALITIES = frozenset({"CR", "DX"})  # what `pacs screen` reads; a study without one has nothing to screen
MANUFACTURER = "pneumo"  # the results pneumo stores are never films to screen
DEFAULT_TIMEOUT = 3600.0  # seconds one run may take before it is ended (a hung child must not stop the queue)
MAX_BATCH = 64  # studies per run: one model load serves many, and a run's command line stays short
_STOP = ""  # queued by stop(): no Orthanc id is empty


class Screener:
    """The queue of stable studies and the worker thread that screens them, one child process at a time.

    command: the screening command without its studies (each study adds `--study UID`); rest_get: Orthanc's own REST
    API (orthanc.RestApiGet) to learn a study's UID and films; log: one line to Orthanc's log per run."""

    def __init__(
        self,
        command: Sequence[str],
        rest_get: Callable[[str], Any],
        log: Callable[[str], None],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        log_file: str | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.command = list(command)
        self.rest_get, self.log = rest_get, log
        self.cwd, self.env, self.timeout, self.log_file = cwd, env, float(timeout), log_file
        self.max_batch = max(1, int(max_batch))
        self.pending: queue.Queue[str] = queue.Queue()
        # Orthanc id -> the film instances of the study when it was last screened without failure. Our own stores
        # make a study unstable and then stable again; with the same films there is nothing new to read.
        self.done: dict[str, frozenset[str]] = {}
        self.runs = 0
        self._child: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="pneumo-onchange", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, orthanc_id: str) -> None:
        """Queue a study (the STABLE_STUDY callback): returns at once, whatever the worker is doing."""
        if orthanc_id and not self._stopping.is_set():
            self.pending.put(orthanc_id)

    def stop(self, wait: float = 5.0) -> None:
        """End the worker (ORTHANC_STOPPED): a running child is terminated, the queue is dropped."""
        self._stopping.set()
        self.pending.put(_STOP)
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(wait)

    # --- the worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            batch = [self.pending.get()]
            while len(batch) < self.max_batch:  # whatever else became stable meanwhile joins this run
                try:
                    batch.append(self.pending.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                return
            try:
                self.screen(dict.fromkeys(batch))
            except Exception as exc:  # the worker outlives any one run: a later study is still screened
                self.log(f"pneumo: screening on arrival failed ({type(exc).__name__}: {exc})")

    def films(self, orthanc_id: str) -> tuple[str, frozenset[str]] | None:
        """The study's UID and its film instances (CR and DX series not written by pneumo); None when the study is
        gone or holds no film."""
        try:
            study = json.loads(self.rest_get(f"/studies/{orthanc_id}"))
            series = json.loads(self.rest_get(f"/studies/{orthanc_id}/series"))
        except Exception:  # deleted since it became stable, or an answer we cannot read: nothing to screen
            return None
        uid = str((study.get("MainDicomTags") or {}).get("StudyInstanceUID") or "")
        films = frozenset(
            str(instance)
            for s in series
            if (s.get("MainDicomTags") or {}).get("Modality") in FILM_MODALITIES
            and (s.get("MainDicomTags") or {}).get("Manufacturer") != MANUFACTURER
            for instance in s.get("Instances") or []
        )
        return (uid, films) if uid and films else None

    def screen(self, orthanc_ids: Iterable[str]) -> dict[str, bool]:
        """One run of `pacs screen` over the studies with new films; Orthanc id -> whether it screened without a
        failure (studies with nothing new are left out)."""
        todo: dict[str, tuple[str, frozenset[str]]] = {}
        for orthanc_id in orthanc_ids:
            found = self.films(orthanc_id)
            if found is not None and self.done.get(orthanc_id) != found[1]:
                todo[orthanc_id] = found
        if not todo:
            return {}
        uids = [uid for uid, _ in todo.values()]
        command = [*self.command, *(arg for uid in uids for arg in ("--study", uid))]
        started = time.monotonic()
        code, out, err = self._run(command)
        entries = _entries(out)
        failed = {str(e.get("study")) for e in entries if e.get("status") == "failed"}
        answered = {str(e.get("study")) for e in entries}
        outcome: dict[str, bool] = {}
        for orthanc_id, (uid, films) in todo.items():
            # A study the run never answered for (a crash before its JSON) counts as failed, as does any failure.
            ok = uid in answered and uid not in failed
            outcome[orthanc_id] = ok
            if ok:
                self.done[orthanc_id] = films
        self.runs += 1
        counts: dict[str, int] = {}
        for entry in entries:
            counts[str(entry.get("status"))] = counts.get(str(entry.get("status")), 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no result"
        self.log(
            f"pneumo: screened {len(uids)} stud{'y' if len(uids) == 1 else 'ies'} on arrival in "
            f"{time.monotonic() - started:.1f} s (exit {code}): {summary}"
            + ("" if all(outcome.values()) else "; failed studies stay for `pacs screen` to retry")
        )
        self._keep_log(command, code, out, err)
        return outcome

    def _run(self, command: list[str]) -> tuple[int, str, str]:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(self.env or {})}
        try:
            child = subprocess.Popen(
                command,
                cwd=self.cwd or None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:  # no such interpreter: every study of the run stays unscreened
            return 127, "", f"{type(exc).__name__}: {exc}"
        self._child = child
        try:
            out, err = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            err += f"\nended after {self.timeout:g} s"
        finally:
            self._child = None
        return child.returncode, out, err

    def _keep_log(self, command: list[str], code: int, out: str, err: str) -> None:
        if not self.log_file:
            return
        try:
            with open(self.log_file, "a", encoding="utf-8") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} exit {code}: {' '.join(command)}\n{out}\n{err}\n")
        except OSError:
            pass


def _entries(out: str) -> list[dict[str, Any]]:
    """`pacs screen --json`'s one array of entries; [] for anything else (a crash before it printed)."""
    try:
        entries = json.loads(out)
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def screener_from_config(
    config: dict[str, Any], rest_get: Callable[[str], Any], log: Callable[[str], None]
) -> Screener:
    """The Screener the "PneumoOnChange" section describes: Url (the DICOMweb root pneumo reads and stores through),
    Python (pneumo's interpreter), Arguments (more `pacs screen` options, e.g. --model), WorkingDirectory, LogFile,
    Timeout. ValueError without a Url."""
    url = str(config.get("Url") or "")
    if not url:
        raise ValueError(f"no {CONFIG_SECTION}.Url in Orthanc's configuration")
    command = [
        str(config.get("Python") or "python3"),
        "-m",
        "pneumo",
        "pacs",
        "screen",
        "--push",
        "--json",
        *(str(a) for a in config.get("Arguments") or []),
    ]
    return Screener(
        command,
        rest_get,
        log,
        cwd=config.get("WorkingDirectory") or None,
        # The URL (which may carry user:password) goes through the environment: never in a log line or `ps`.
        env={"PNEUMO_PACS_URL": url},
        timeout=float(config.get("Timeout") or DEFAULT_TIMEOUT),
        log_file=config.get("LogFile") or None,
    )


def register(orthanc: Any) -> Screener | None:
    """Read the configuration, start the worker and register the change callback with Orthanc (the plugin's entry);
    None, with a line in Orthanc's log, when the section is missing."""
    try:
        config = json.loads(orthanc.GetConfiguration()).get(CONFIG_SECTION) or {}
        screener = screener_from_config(config, orthanc.RestApiGet, orthanc.LogWarning)
    except ValueError as exc:
        orthanc.LogWarning(f"pneumo: studies are not screened on arrival ({exc})")
        return None
    screener.start()

    def on_change(change_type: Any, level: Any, resource_id: str) -> None:
        # Orthanc's change thread: queue and return, never wait here.
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            screener.submit(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            screener.stop()

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"pneumo: screening each stable study with: {' '.join(screener.command)}")
    return screener


def _main() -> None:
    try:
        import orthanc
    except ImportError:  # imported as a module (tests, the docs), not loaded by Orthanc
        return
    register(orthanc)


_main()
