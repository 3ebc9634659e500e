"""Pid records: how a detached process tells ``samdrop local down`` that it exists.

A batch worker (``python -m pipeline.worker``) runs in its own session, outliving the request that
started it; it writes ``<folder>/<pid>.json`` while it runs, and ``deploy.local`` stops every
recorded process group that is still alive. The start time guards against a reused pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

WORKERS_DIR = "workers"  # under the state dir: batch workers' records


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, …; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux); None when unknown."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields is not None else None


@contextlib.contextmanager
def recorded(folder: Path, log: Path | None = None) -> Iterator[Path]:
    """Keep ``<folder>/<pid>.json`` for this process while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = folder / f"{pid}.json"
    record = {
        "pid": pid,
        "pgid": os.getpgid(0),
        "start_ticks": start_ticks(pid),
        "argv": sys.argv,
        "log": str(log or ""),
        "started_at": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
