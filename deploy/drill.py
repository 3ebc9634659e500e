"""An outage drill on the running local stack: a burst of uploads, one server killed mid-burst
(SIGKILL to its whole process group, as a crash or an OOM kill would), brought back after a while,
and a count of what arrived. ``benchmarks/fault_bench.py`` prints its figures; the integration
tests assert them. See docs/usage.md "Failures, duplicates, outages".
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import processes
from deploy.harness import Upload, upload_file
from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from deploy.processes import LocalStackError
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

PULL_TIMEOUT_S = 5.0
HEALTH_POLL_S = 0.1  # how often the drill asks the killed server whether it answers again


@dataclass
class DrillReport:
    """What happened; times in seconds from the first upload."""

    uploads: int
    victim: str
    killed_at_s: float
    outage_s: float  # from the kill until the victim answered its health check again
    restart_s: float  # how long the restart command ran
    completed: int  # uploads with at least one completion message
    succeeded: int
    failed: int
    duplicates: int  # completion messages beyond the first per (input, generation)
    dead_letters: int
    last_completion_s: float | None
    drain_after_restart_s: float | None  # the victim answering again → last completion
    statuses: dict[str, int] = field(default_factory=dict)
    restart_output: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "restart_output"}


class CompletionLog:
    """Pulls the completions subscription in a thread and keeps every message (duplicates too)."""

    def __init__(self, stack: LocalStack) -> None:
        settings = stack.settings
        _, self.subscriber = pubsub_clients(stack.client_env()["PUBSUB_EMULATOR_HOST"])
        self.path = self.subscriber.subscription_path(settings.project, settings.completions_subscription)
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="completions", daemon=True)

    def __enter__(self) -> CompletionLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PULL_TIMEOUT_S + 5)
        self.subscriber.close()

    def by_upload(self) -> dict[tuple[str, str], list[tuple[float, dict[str, Any]]]]:
        with self._lock:
            grouped: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = collections.defaultdict(list)
            for at, body in self.messages:
                grouped[(str(body.get("input")), str(body.get("generation")))].append((at, body))
            return grouped

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.subscriber.pull(
                    request={"subscription": self.path, "max_messages": 100}, timeout=PULL_TIMEOUT_S
                )
            except Exception:  # the emulator answering slowly under load: pull again
                continue
            if not response.received_messages:
                continue
            now = time.monotonic()
            with self._lock:
                for received in response.received_messages:
                    try:
                        self.messages.append((now, json.loads(received.message.data)))
                    except ValueError:
                        continue
            ack_ids = [m.ack_id for m in response.received_messages]
            self.subscriber.acknowledge(
                request={"subscription": self.path, "ack_ids": ack_ids}, timeout=DEFAULT_REQUEST_TIMEOUT_S
            )


def kill(stack: LocalStack, name: str) -> processes.ProcessRecord:
    """SIGKILL the process group of server ``name`` and wait until it is gone."""
    state = processes.load_state(stack.state_path)
    records = [r for r in (state.processes if state else []) if r.name == name and processes.is_running(r)]
    if not records:
        raise LocalStackError(f"{name} is not running in the stack at {stack.state_path}")
    processes.kill(records)
    return records[0]


def outage_drill(
    stack: LocalStack,
    files: Sequence[Path],
    prompts: Callable[[int], dict[str, Any] | None],
    *,
    restart: Callable[[], str],
    victim: str = "predictor",
    kill_after_s: float = 15.0,
    outage_s: float = 60.0,
    timeout_s: float = 900.0,
    prefix: str = "drill",
    say: Callable[[str], None] = lambda line: None,
) -> DrillReport:
    """Upload ``files`` (``prompts(i)`` for file i) under ``<incoming>/<prefix>/``, kill ``victim``
    ``kill_after_s`` after the first upload, call ``restart`` ``outage_s`` later, and wait until
    every upload has a completion (or ``timeout_s``). ``restart`` returns what it printed.

    The outage reported is what a client saw: from the kill until the victim's health check answered
    again, polled every :data:`HEALTH_POLL_S` from the kill on, so it is at least ``outage_s`` only
    if nothing brought the victim back before ``restart`` did."""
    settings = stack.settings
    env = stack.client_env()
    client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
    uploads: list[Upload] = []
    with CompletionLog(stack) as log:
        started = time.monotonic()

        def upload(item: tuple[int, Path]) -> Upload:
            index, path = item
            name = f"{settings.incoming_prefix}{prefix}/{index:05d}-{path.name}"
            return upload_file(client, settings.bucket, path, name, prompts(index))

        with ThreadPoolExecutor(8) as pool, contextlib.ExitStack() as watching:
            pending = pool.map(upload, enumerate(files))
            time.sleep(max(0.0, kill_after_s - (time.monotonic() - started)))
            killed = kill(stack, victim)
            killed_at = time.monotonic()
            watch = HealthWatch(killed.health_url, any_status=_any_status(stack, victim))
            watching.enter_context(watch)
            say(f"killed {victim} at {killed_at - started:.1f} s")
            uploads = list(pending)
            time.sleep(max(0.0, outage_s - (time.monotonic() - killed_at)))
            restart_began = time.monotonic()
            output = restart()
            restart_s = time.monotonic() - restart_began
            answered_at = watch.wait(timeout_s)
        say(
            f"{victim} answered again {answered_at - killed_at:.1f} s after the kill (the restart took "
            f"{restart_s:.1f} s):\n{output.strip()}"
        )
        wanted = {(u.uri, u.generation) for u in uploads}
        deadline = started + timeout_s
        while time.monotonic() < deadline and not wanted <= set(log.by_upload()):
            time.sleep(1.0)
        time.sleep(5.0)  # a duplicate would arrive within seconds of the first
        grouped = log.by_upload()
    client.close()
    mine = {key: grouped.get(key, []) for key in wanted}
    firsts = [messages[0] for messages in mine.values() if messages]
    statuses = collections.Counter(str(body.get("status")) for _, body in firsts)
    last = max((at for at, _ in firsts), default=None)
    return DrillReport(
        uploads=len(uploads),
        victim=victim,
        killed_at_s=round(killed_at - started, 1),
        outage_s=round(answered_at - killed_at, 1),
        restart_s=round(restart_s, 1),
        completed=len(firsts),
        succeeded=statuses.get("succeeded", 0),
        failed=statuses.get("failed", 0),
        duplicates=sum(max(0, len(messages) - 1) for messages in mine.values()),
        dead_letters=count_dead_letters(stack),
        last_completion_s=None if last is None else round(last - started, 1),
        drain_after_restart_s=None if last is None else round(max(0.0, last - answered_at), 1),
        statuses=dict(statuses),
        restart_output=output,
    )


class HealthWatch:
    """Polls ``url`` in a thread from ``__enter__`` until it answers; :meth:`wait` says when."""

    def __init__(self, url: str, *, any_status: bool) -> None:
        self.url = url
        self.any_status = any_status
        self.answered_at: float | None = None
        self._stop = threading.Event()
        self._answered = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HEALTH_POLL_S + processes.PROBE_TIMEOUT_S + 1)

    def wait(self, timeout_s: float) -> float:
        """The monotonic time of the first answer; raises if none came within ``timeout_s``."""
        if not self._answered.wait(timeout_s) or self.answered_at is None:
            raise LocalStackError(f"{self.url} did not answer within {timeout_s:g}s of the restart")
        return self.answered_at

    def _run(self) -> None:
        while not self._stop.is_set():
            if processes.probe(self.url, any_status=self.any_status):
                self.answered_at = time.monotonic()
                self._answered.set()
                return
            self._stop.wait(HEALTH_POLL_S)


def _any_status(stack: LocalStack, name: str) -> bool:
    """Whether server ``name`` counts any HTTP answer as healthy (as ``samdrop local up`` does)."""
    return next(spec.any_status for spec in stack.specs() if spec.name == name)


def count_dead_letters(stack: LocalStack) -> int:
    """Messages waiting on the dead-letter subscription (left there: `samdrop redrive` moves them)."""
    settings = stack.settings
    _, subscriber = pubsub_clients(stack.client_env()["PUBSUB_EMULATOR_HOST"])
    path = subscriber.subscription_path(settings.project, settings.dead_letter_subscription)
    seen: dict[str, str] = {}  # message id -> ack id, held until every one is counted
    try:
        while True:
            response = subscriber.pull(
                request={"subscription": path, "max_messages": 100, "return_immediately": True}, timeout=10
            )
            fresh = {m.message.message_id: m.ack_id for m in response.received_messages}
            if not fresh.keys() - seen.keys():
                break
            seen.update(fresh)
        if seen:  # hand them straight back
            subscriber.modify_ack_deadline(
                request={"subscription": path, "ack_ids": list(seen.values()), "ack_deadline_seconds": 0},
                timeout=DEFAULT_REQUEST_TIMEOUT_S,
            )
    finally:
        subscriber.close()
    return len(seen)
