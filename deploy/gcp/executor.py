"""Run a plan: probe, act, record outputs; and check the machine can run one at all."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import ApiCall, DeployError, Gcloud, Outcome, Step, StepResult, resolve

GCLOUD_TIMEOUT_S = 3600.0  # Cloud Build of the CUDA image and a function deploy take many minutes


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class GcloudRunner(Protocol):
    def __call__(self, argv: Sequence[str]) -> CommandResult: ...


class SubprocessGcloud:
    """Runs ``gcloud`` argv for real: no prompts, stdout captured, stderr kept for errors."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout_s: float = GCLOUD_TIMEOUT_S) -> None:
        self.env = {**(os.environ if env is None else env), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
        self.timeout_s = timeout_s

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        try:
            done = subprocess.run(
                list(argv), env=self.env, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise DeployError(f"`{' '.join(argv)}` did not finish within {self.timeout_s:.0f}s") from None
        return CommandResult(done.returncode, done.stdout, done.stderr)


Report = Callable[[int, Step, StepResult], None]


class Executor:
    """Executes steps in order; stops at the first failure with what to do next."""

    def __init__(self, gcloud: GcloudRunner, clients: CloudClients) -> None:
        self.gcloud = gcloud
        self.clients = clients
        self.outputs: dict[str, str] = {}

    def run(self, steps: Sequence[Step], report: Report | None = None) -> list[StepResult]:
        results = []
        for number, step in enumerate(steps, start=1):
            try:
                result = self.run_step(step)
            except DeployError as exc:
                raise DeployError(
                    f"step {number} ({step.key}: {step.description}) failed: {exc.message}\n"
                    "fix the cause and run the same command again: finished steps are skipped"
                ) from None
            self.outputs.update(result.outputs)
            results.append(result)
            if report is not None:
                report(number, step, result)
        return results

    def run_step(self, step: Step) -> StepResult:
        action = step.action
        if isinstance(action, ApiCall):
            return self._call(action)
        return self._gcloud(action)

    def _call(self, action: ApiCall) -> StepResult:
        args = resolve(dict(action.args), self.outputs)
        try:
            return action.func(self.clients, **args)
        except DeployError:
            raise
        except Exception as exc:  # client-library errors carry their own message; say which call
            raise DeployError(f"{type(exc).__name__}: {exc}") from exc

    def _gcloud(self, action: Gcloud) -> StepResult:
        if action.probe is not None:
            probe = dataclasses.replace(
                action.probe,
                argv=resolve(action.probe.argv, self.outputs),
                expect=resolve(action.probe.expect, self.outputs),
            )
            checked = self.gcloud(probe.argv)
            if probe.is_done(checked.returncode, checked.stdout):
                return StepResult("absent" if probe.done_when in ("fails", "unbinds") else "unchanged")
        argv = resolve(action.argv, self.outputs)
        done = self.gcloud(argv)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()[-2000:]
            raise DeployError(f"`{' '.join(argv)}` exited with {done.returncode}: {detail}")
        if action.output is not None:
            value = done.stdout.strip()
            if not value:
                raise DeployError(f"`{' '.join(argv)}` printed nothing; expected {action.output}")
            return StepResult("read", value, {action.output: value})
        return StepResult(_outcome_of_change(action))


def preflight(gcloud: GcloudRunner, which: Callable[[str], str | None] = shutil.which) -> str:
    """The active gcloud account, after checking gcloud and both kinds of credentials exist.

    gcloud steps use the CLI's login; client-library steps use Application Default Credentials.
    """
    if which("gcloud") is None:
        raise DeployError(
            "gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
        )
    accounts = gcloud(["gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"])
    account = accounts.stdout.strip().splitlines()[0] if accounts.stdout.strip() else ""
    if accounts.returncode != 0 or not account:
        raise DeployError("gcloud has no active account: run `gcloud auth login`")
    try:
        import google.auth
        from google.auth import exceptions as auth_exceptions

        google.auth.default()
    except auth_exceptions.DefaultCredentialsError:
        raise DeployError(
            "no Application Default Credentials for the client libraries: "
            "run `gcloud auth application-default login`"
        ) from None
    return account


def _outcome_of_change(action: Gcloud) -> Outcome:
    """What running a probed command did: the probe said the work was not done yet."""
    if action.probe is None:
        return "done"
    outcomes: dict[str, Outcome] = {"succeeds": "created", "fails": "deleted", "unbinds": "deleted"}
    return outcomes.get(action.probe.done_when, "updated")
