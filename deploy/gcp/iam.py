"""The three service accounts and the least roles each needs, as ``gcloud`` steps.

``grants()`` is the one list of roles: deploy adds them, destroy removes them, and the README's
table says the same (a test checks that it names every role).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from deploy.gcp.options import DeployOptions, Names
from deploy.gcp.plan import Gcloud, Probe, Step

Scope = Literal["project", "bucket", "topic", "service-account"]
ACCOUNTS = {
    "function": "samdrop function: reads uploads, calls the endpoint, writes masks, starts pipelines",
    "endpoint": "samdrop endpoint: the SAM serving container on Vertex AI",
    "pipeline": "samdrop pipeline: runs bulk drops on Vertex AI Pipelines",
}


@dataclass(frozen=True)
class Grant:
    account: str  # function, endpoint or pipeline
    role: str
    scope: Scope
    resource: str  # project id, bucket name, topic name or service-account email
    why: str


def grants(options: DeployOptions, completions_topic: str, output_bucket: str) -> list[Grant]:
    """Every role binding deploy makes, on the narrowest resource that works."""
    names = options.names
    project, bucket = options.project, options.bucket
    pipeline_sa = names.service_account("pipeline")
    out: list[Grant] = []
    if output_bucket != bucket:
        out += [
            Grant("function", "roles/storage.objectViewer", "bucket", bucket, "read uploaded images"),
            Grant("pipeline", "roles/storage.objectViewer", "bucket", bucket, "read the batch's images"),
        ]
    out += [
        Grant(
            "function",
            "roles/storage.objectUser",
            "bucket",
            output_bucket,
            "read inputs, write masks/masks.json/overlay and batch claims (replacing results of an "
            "older generation needs delete)",
        ),
        Grant("function", "roles/pubsub.publisher", "topic", completions_topic, "publish completions"),
        Grant(
            "function",
            "roles/aiplatform.user",
            "project",
            project,
            "call the endpoint's :predict and create pipeline runs",
        ),
        Grant(
            "function",
            "roles/iam.serviceAccountUser",
            "service-account",
            pipeline_sa,
            "start pipeline runs that act as the pipeline account, and nothing wider",
        ),
        Grant(
            "endpoint",
            "roles/storage.objectViewer",
            "bucket",
            bucket,
            "read the images the function passes by gs:// URI",
        ),
        Grant(
            "pipeline",
            "roles/storage.objectUser",
            "bucket",
            output_bucket,
            "read the batch and its template, write results, reports and the pipeline root",
        ),
        Grant("pipeline", "roles/pubsub.publisher", "topic", completions_topic, "publish batch completions"),
        Grant(
            "pipeline",
            "roles/aiplatform.user",
            "project",
            project,
            "run the pipeline's GPU tasks and record their metadata",
        ),
    ]
    if output_bucket != bucket:
        # the pipeline template and root live in the upload bucket
        out.append(
            Grant("pipeline", "roles/storage.objectUser", "bucket", bucket, "pipeline template and root")
        )
    if options.checkpoint is not None:
        models = options.checkpoint.removeprefix("gs://").split("/", 1)[0]
        if models not in (bucket, output_bucket):
            out.append(
                Grant(
                    "pipeline",
                    "roles/storage.objectViewer",
                    "bucket",
                    models,
                    "load the SAM checkpoint in the pipeline's tasks",
                )
            )
    return out


def create_account_steps(names: Names) -> list[Step]:
    steps = []
    for account, display in ACCOUNTS.items():
        email = names.service_account(account)
        steps.append(
            Step(
                f"Service account {email}",
                Gcloud(
                    (
                        "gcloud",
                        "iam",
                        "service-accounts",
                        "create",
                        f"samdrop-{account}",
                        f"--project={names.project}",
                        f"--display-name={display}",
                    ),
                    probe=Probe(_describe_account(email, names.project), "succeeds"),
                ),
                key=f"service-account:{account}",
            )
        )
    return steps


def delete_account_steps(names: Names) -> list[Step]:
    steps = []
    for account in reversed(ACCOUNTS):
        email = names.service_account(account)
        steps.append(
            Step(
                f"Delete service account {email}",
                Gcloud(
                    (
                        "gcloud",
                        "iam",
                        "service-accounts",
                        "delete",
                        email,
                        f"--project={names.project}",
                        "--quiet",
                    ),
                    probe=Probe(_describe_account(email, names.project), "fails"),
                ),
                key=f"delete-service-account:{account}",
            )
        )
    return steps


def grant_steps(names: Names, grant_list: list[Grant]) -> list[Step]:
    return [_binding_step(names, g, add=True) for g in grant_list]


def revoke_steps(names: Names, grant_list: list[Grant]) -> list[Step]:
    """Remove the project and bucket bindings (topics and accounts take theirs with them)."""
    return [_binding_step(names, g, add=False) for g in grant_list if g.scope in ("project", "bucket")]


def binding_step(
    key: str, description: str, scope: Scope, resource: str, member: str, role: str, project: str
) -> Step:
    """One ``add-iam-policy-binding``, skipped when the policy already has it."""
    command, target = _scope_command(scope, resource, project)
    return Step(
        description,
        Gcloud(
            (*command, "add-iam-policy-binding", *target, f"--member={member}", f"--role={role}"),
            probe=Probe((*command, "get-iam-policy", *target, "--format=json"), "binds", (role, member)),
        ),
        key=key,
    )


def _binding_step(names: Names, grant: Grant, *, add: bool) -> Step:
    member = f"serviceAccount:{names.service_account(grant.account)}"
    where = f"{grant.scope} {grant.resource}"
    key = f"{'grant' if add else 'revoke'}:{grant.account}:{grant.role}:{grant.scope}:{grant.resource}"
    if add:
        return binding_step(
            key,
            f"{grant.role} for {grant.account} on {where}: {grant.why}",
            grant.scope,
            grant.resource,
            member,
            grant.role,
            names.project,
        )
    command, target = _scope_command(grant.scope, grant.resource, names.project)
    extra = ("--condition=None",) if grant.scope == "project" else ()
    return Step(
        f"Remove {grant.role} for {grant.account} on {where}",
        Gcloud(
            (
                *command,
                "remove-iam-policy-binding",
                *target,
                f"--member={member}",
                f"--role={grant.role}",
                *extra,
            ),
            probe=Probe(
                (*command, "get-iam-policy", *target, "--format=json"), "unbinds", (grant.role, member)
            ),
        ),
        key=key,
    )


def _scope_command(scope: Scope, resource: str, project: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the gcloud command group, the resource arguments) for IAM on ``resource``."""
    if scope == "project":
        return ("gcloud", "projects"), (resource,)
    if scope == "bucket":
        return ("gcloud", "storage", "buckets"), (f"gs://{resource}",)
    if scope == "topic":
        return ("gcloud", "pubsub", "topics"), (resource, f"--project={project}")
    return ("gcloud", "iam", "service-accounts"), (resource, f"--project={project}")


def _describe_account(email: str, project: str) -> tuple[str, ...]:
    return ("gcloud", "iam", "service-accounts", "describe", email, f"--project={project}")
