"""Steps of a deployment plan and how they are written out for ``--dry-run``.

A step is a description plus one action: a ``gcloud`` argv (with an optional probe that says
whether the work is already done) or a call of a Python function with its keyword arguments,
each function taking the clients first. Values only known while running (the project number, the
endpoint id) appear as ``${name}`` references; an earlier step produces them and the executor
substitutes them, so the printed plan and the executed one are the same objects.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from samdrop.errors import SamdropError

Outcome = Literal["created", "updated", "unchanged", "deleted", "absent", "done", "read"]
DoneWhen = Literal["succeeds", "fails", "prints", "lists", "binds", "unbinds"]
_REF = re.compile(r"\$\{([a-z_]+)\}")


class DeployError(SamdropError):
    """A step failed, or the machine is not ready to deploy (no gcloud, no credentials)."""

    code = "deploy"


@dataclass(frozen=True)
class Probe:
    """A read-only ``gcloud`` command that tells whether a step's work is already done.

    ``done_when``: ``succeeds`` (exit 0: the resource exists), ``fails`` (a delete whose resource is
    gone), ``prints`` (stdout has every line of ``expect``; with none, any output), ``lists``
    (stdout's lines are exactly those of ``expect``, in any order), ``binds``
    (stdout is a JSON IAM policy binding role ``expect[0]`` to member ``expect[1]``), ``unbinds``
    (the policy does not, or cannot be read because its resource is gone).
    """

    argv: tuple[str, ...]
    done_when: DoneWhen
    expect: tuple[str, ...] = ()

    def is_done(self, returncode: int, stdout: str) -> bool:
        if self.done_when == "fails":
            return returncode != 0
        if self.done_when == "unbinds":
            return returncode != 0 or not policy_binds(stdout, *self.expect)
        if returncode != 0:
            return False
        if self.done_when == "succeeds":
            return True
        lines = {line.strip() for line in stdout.splitlines() if line.strip()}
        if self.done_when == "prints":
            return set(self.expect) <= lines if self.expect else bool(lines)
        if self.done_when == "lists":
            return lines == set(self.expect)
        role, member = self.expect
        return policy_binds(stdout, role, member)

    def describe(self) -> str:
        if self.done_when == "prints":
            what = "prints " + (", ".join(self.expect) if self.expect else "anything")
        elif self.done_when == "lists":
            what = "prints exactly " + ", ".join(self.expect)
        elif self.done_when == "binds":
            what = f"shows {self.expect[1]} with {self.expect[0]}"
        elif self.done_when == "unbinds":
            what = f"fails or does not show {self.expect[1]} with {self.expect[0]}"
        else:
            what = self.done_when
        return f"skip if `{shlex.join(self.argv)}` {what}"


@dataclass(frozen=True)
class Gcloud:
    """Run ``argv`` unless ``probe`` says it is done; ``output`` names a value to keep from stdout."""

    argv: tuple[str, ...]
    probe: Probe | None = None
    output: str | None = None

    def render(self) -> list[str]:
        line = f"$ {shlex.join(self.argv)}"
        if self.output:
            line = f"{self.output} := {line}"
        return [line] + ([self.probe.describe()] if self.probe else [])


@dataclass(frozen=True)
class ApiCall:
    """``func(clients, **args)`` through a client library; ``func`` checks current state itself."""

    func: Callable[..., StepResult]
    args: Mapping[str, Any]

    def render(self) -> list[str]:
        arguments = ", ".join(f"{key}={_literal(value)}" for key, value in self.args.items())
        return [f"call {self.func.__module__}.{self.func.__qualname__}({arguments})"]


@dataclass(frozen=True)
class Step:
    description: str
    action: Gcloud | ApiCall
    key: str  # stable, unique id: progress lines and tests name steps by it


@dataclass(frozen=True)
class StepResult:
    outcome: Outcome
    detail: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


def render_plan(steps: Iterable[Step]) -> str:
    """The plan as text: numbered steps, each action indented under its description."""
    lines = []
    for number, step in enumerate(steps, start=1):
        lines.append(f"{number:2}. {step.description}  [{step.key}]")
        lines += [f"      {line}" for line in step.action.render()]
    return "\n".join(lines) + "\n"


def resolve(value: Any, known: Mapping[str, str]) -> Any:
    """``value`` with every ``${name}`` replaced from ``known`` (strings, tuples, lists, dicts)."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in known:
                raise DeployError(f"no value for ${{{name}}}: the step that produces it has not run")
            return known[name]

        return _REF.sub(substitute, value)
    if isinstance(value, tuple):
        return tuple(resolve(item, known) for item in value)
    if isinstance(value, list):
        return [resolve(item, known) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, known) for key, item in value.items()}
    return value


def policy_binds(policy_json: str, role: str, member: str) -> bool:
    """Whether an IAM policy (``gcloud … get-iam-policy --format=json``) grants ``role`` to ``member``."""
    try:
        policy = json.loads(policy_json or "{}")
    except json.JSONDecodeError:
        return False
    return any(
        binding.get("role") == role and member in binding.get("members", [])
        for binding in policy.get("bindings", [])
        if not binding.get("condition")
    )


def _literal(value: Any) -> str:
    """A deterministic Python-like literal: dict keys in insertion order, strings quoted."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)
