"""Background servers as process groups: start with a log file, wait until healthy, stop for sure.

Each server runs in its own session (``start_new_session``), so its process group holds every
child it spawns (gcloud starts java, functions-framework starts gunicorn workers) and one
``killpg`` reaches them all, from this process or any other that reads the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from samdrop.errors import SamdropError
from samdrop.pidfile import start_ticks

STATE_VERSION = 1
PROBE_TIMEOUT_S = 2.0


class LocalStackError(SamdropError):
    """The local stack cannot start, is not running, or a part of it is missing."""

    code = "local_stack"


@dataclass(frozen=True)
class ProcessRecord:
    """What ``down`` needs to find and stop one started server, even from another process."""

    name: str
    pid: int
    pgid: int
    port: int
    argv: list[str]
    log: str
    health_url: str
    started_at: float
    # /proc start time in clock ticks: guards against signalling a reused pid.
    start_ticks: int | None = None


@dataclass
class StackState:
    """The state file: every server ``up`` started, in start order, plus the env clients need."""

    processes: list[ProcessRecord] = field(default_factory=list)
    client_env: dict[str, str] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)
        if raw.get("version") != STATE_VERSION:
            raise LocalStackError(f"state file version {raw.get('version')!r} is not {STATE_VERSION}")
        return cls(
            processes=[ProcessRecord(**p) for p in raw["processes"]],
            client_env=dict(raw.get("client_env", {})),
        )


def load_state(path: Path) -> StackState | None:
    """The state at ``path``, or None when no stack was started there."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return StackState.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalStackError(f"state file {path} is unreadable ({exc}); stop the servers by hand") from None


def save_state(path: Path, state: StackState) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    tmp.replace(path)


def start(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], log: Path, port: int, health_url: str
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise LocalStackError(f"cannot start {name} ({argv[0]}): {exc}") from None
    record = ProcessRecord(
        name=name,
        pid=proc.pid,
        pgid=proc.pid,  # a new session's leader leads its own group
        port=port,
        argv=list(argv),
        log=str(log),
        health_url=health_url,
        started_at=time.time(),
        start_ticks=start_ticks(proc.pid),
    )
    return proc, record


def probe(url: str, *, any_status: bool = False, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``url`` answers 200 (or any HTTP status when ``any_status``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(any_status or response.status == 200)
    except urllib.error.HTTPError as exc:
        return any_status and exc.code < 500
    except (OSError, ValueError):
        return False


def wait_ready(
    proc: subprocess.Popen[bytes], record: ProcessRecord, *, timeout_s: float, any_status: bool = False
) -> float:
    """Poll the health URL until it answers; seconds waited. Raises with the log's tail otherwise."""
    began = time.monotonic()
    while True:
        if probe(record.health_url, any_status=any_status):
            return time.monotonic() - began
        code = proc.poll()
        if code is not None:
            raise LocalStackError(
                f"{record.name} exited with status {code} before it was ready; "
                f"see {record.log}:\n{tail(Path(record.log))}"
            )
        if time.monotonic() - began > timeout_s:
            raise LocalStackError(
                f"{record.name} did not answer {record.health_url} within {timeout_s:g}s; "
                f"see {record.log}:\n{tail(Path(record.log))}"
            )
        time.sleep(0.2)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def is_running(record: ProcessRecord) -> bool:
    """True when the recorded process group still has a live member that we started."""
    if record.start_ticks is not None and start_ticks(record.pid) not in (None, record.start_ticks):
        return False  # the pid now belongs to another program; its group is not ours
    return bool(live_members(record.pgid))


def stop(records: Sequence[ProcessRecord], *, grace_s: float = 8.0) -> list[str]:
    """SIGTERM each group, SIGKILL what is left after ``grace_s``; names of groups killed hard."""
    targets = [r for r in records if is_running(r)]
    for record in targets:
        _signal_group(record.pgid, signal.SIGTERM)
    killed = []
    if not _wait_gone(targets, grace_s):
        for record in targets:
            if live_members(record.pgid):
                killed.append(record.name)
                _signal_group(record.pgid, signal.SIGKILL)
        if not _wait_gone(targets, 5.0):
            left = ", ".join(f"{r.name} (pgid {r.pgid})" for r in targets if live_members(r.pgid))
            raise LocalStackError(f"could not stop {left}")
    return killed


def kill(records: Sequence[ProcessRecord]) -> None:
    """SIGKILL each group at once, as a crash would end it, and wait until it is gone."""
    for record in records:
        _signal_group(record.pgid, signal.SIGKILL)
    if not _wait_gone(records, 10.0):
        raise LocalStackError("could not kill " + ", ".join(r.name for r in records))


def _wait_gone(records: Sequence[ProcessRecord], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        for record in records:
            _reap(record.pid)
        if not any(live_members(r.pgid) for r in records):
            for record in records:  # a leader that just exited is still a zombie until reaped
                _reap(record.pid)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _reap(pid: int) -> None:
    # Only a leader this process started can be reaped here; otherwise its parent (or init) does it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def live_members(pgid: int) -> list[int]:
    """Pids in group ``pgid`` that are not zombies (a zombie holds its pid but runs nothing)."""
    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile, or not ours to ask about
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
    return members


def worker_records(folder: Path) -> list[ProcessRecord]:
    """Processes that recorded themselves with ``samdrop.pidfile.recorded`` in ``folder``; records
    of processes that are gone are removed."""
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            record = ProcessRecord(
                name=f"batch worker {raw['pid']}",
                pid=int(raw["pid"]),
                pgid=int(raw["pgid"]),
                port=0,
                argv=list(raw.get("argv", [])),
                log=str(raw.get("log", "")),
                health_url="",
                started_at=float(raw.get("started_at", 0.0)),
                start_ticks=raw.get("start_ticks"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: nothing to stop
        if is_running(record):
            records.append(record)
        else:
            path.unlink(missing_ok=True)
    return records
