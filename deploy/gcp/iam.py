"""The three service accounts, the two custom roles and the least roles each account needs.

``grants()`` is the one list of roles: deploy adds them, destroy removes them, and docs/deploy.md's
table says the same (a test checks that it names every role). The trust zones they draw are in
docs/operations.md "Trust zones".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from deploy.gcp import vertex_calls
from deploy.gcp.options import DeployOptions, Names
from deploy.gcp.plan import ApiCall, Gcloud, Probe, Step

Scope = Literal["project", "bucket", "topic", "service-account", "endpoint"]
ACCOUNTS = {
    "function": "samdrop function: reads uploads, calls the endpoint, writes masks, starts pipelines",
    "endpoint": "samdrop endpoint: the SAM serving container on Vertex AI",
    "pipeline": "samdrop pipeline: runs bulk drops on Vertex AI Pipelines",
}


@dataclass(frozen=True)
class CustomRole:
    """A role deploy defines in the project, holding exactly ``permissions``."""

    role_id: str
    title: str
    permissions: tuple[str, ...]


# Vertex AI lets an endpoint carry its own IAM policy, so :predict is granted on samdrop's endpoint
# alone; pipeline jobs have no resource-level policy, so creating and reading them is granted on the
# project, with nothing else of roles/aiplatform.user (no models, endpoints, datasets, jobs …).
PREDICT = CustomRole(
    "samdropPredict", "samdrop: call predict on an endpoint", ("aiplatform.endpoints.predict",)
)
PIPELINE_LAUNCHER = CustomRole(
    "samdropPipelineLauncher",
    "samdrop: start and read pipeline runs",
    (
        "aiplatform.metadataStores.get",  # Vertex AI checks it when a pipeline job is created
        "aiplatform.pipelineJobs.create",
        "aiplatform.pipelineJobs.get",
        "aiplatform.pipelineJobs.list",
    ),
)
CUSTOM_ROLES = (PREDICT, PIPELINE_LAUNCHER)


@dataclass(frozen=True)
class Grant:
    account: str  # function, endpoint or pipeline; or "uploader" for a --uploader member
    role: str
    scope: Scope
    resource: str  # project id, bucket name, topic name, service-account email or endpoint name
    why: str
    member: str | None = None  # an uploader's IAM member; None: samdrop's service account ``account``

    def principal(self, names: Names) -> str:
        return self.member or f"serviceAccount:{names.service_account(self.account)}"

    @property
    def who(self) -> str:
        return f"{self.account} {self.member}" if self.member else self.account


def grants(options: DeployOptions, completions_topic: str) -> list[Grant]:
    """Every role binding deploy makes, on the narrowest resource that works. Uploaders write the
    upload bucket only; results, and the pipeline's code, live where no uploader may write."""
    names = options.names
    project, bucket, results = options.project, options.bucket, options.results
    pipeline_sa = names.service_account("pipeline")
    out = [
        Grant("function", "roles/storage.objectViewer", "bucket", bucket, "read uploads and batch files"),
        Grant(
            "function",
            "roles/storage.objectUser",
            "bucket",
            results,
            "write masks, masks.json, overlays, completions and batch claims (replacing results of an "
            "older generation needs delete)",
        ),
        Grant(
            "function",
            "roles/storage.objectViewer",
            "bucket",
            options.pipelines,
            "read the pipeline template it submits (and write nothing there)",
        ),
        Grant("function", "roles/pubsub.publisher", "topic", completions_topic, "publish completions"),
        Grant(
            "function",
            names.custom_role(PREDICT.role_id),
            "endpoint",
            names.endpoint,
            "call :predict on samdrop's endpoint and no other",
        ),
        Grant(
            "function",
            names.custom_role(PIPELINE_LAUNCHER.role_id),
            "project",
            project,
            "create and read pipeline runs (Vertex AI has no per-pipeline IAM)",
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
            "read the images the function passes by gs:// URI (and no other bucket)",
        ),
        # Granted whatever SAMDROP_TRACES says, so a later `SAMDROP_TRACES=cloud samdrop deploy` and
        # destroy need no second list; the role only writes spans.
        *(
            Grant(account, "roles/cloudtrace.agent", "project", project, "write spans (SAMDROP_TRACES=cloud)")
            for account in ("function", "endpoint")
        ),
        Grant("pipeline", "roles/storage.objectViewer", "bucket", bucket, "read the batch's images"),
        Grant(
            "pipeline",
            "roles/storage.objectUser",
            "bucket",
            results,
            "write results, manifests, reports and the pipeline root",
        ),
        Grant("pipeline", "roles/pubsub.publisher", "topic", completions_topic, "publish batch completions"),
        Grant(
            "pipeline",
            "roles/aiplatform.user",
            "project",
            project,
            "what Vertex AI Pipelines needs of the account a run acts as: run the tasks, record metadata",
        ),
    ]
    out += [
        Grant(
            "uploader",
            "roles/storage.objectUser",
            "bucket",
            bucket,
            "upload and replace images; nothing in the results or pipelines buckets",
            member=member,
        )
        for member in options.uploaders
    ]
    # The weights: the models bucket deploy stages them into, and a --checkpoint gs:// bucket elsewhere.
    # The endpoint needs neither (Vertex AI copies artifact_uri for it); the pipeline's tasks load them.
    weights_buckets = [options.models]
    if options.checkpoint is not None and options.checkpoint.startswith("gs://"):
        weights_buckets.append(options.checkpoint.removeprefix("gs://").split("/", 1)[0])
    for models in dict.fromkeys(weights_buckets):
        if models not in (bucket, results):
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


def custom_role_steps(names: Names) -> list[Step]:
    """Each custom role created, then its permissions set to exactly the list (a changed list updates)."""
    steps = []
    for role in CUSTOM_ROLES:
        permissions = ",".join(role.permissions)
        describe = ("gcloud", "iam", "roles", "describe", role.role_id, f"--project={names.project}")
        steps += [
            Step(
                f"Custom role {names.custom_role(role.role_id)}: {', '.join(role.permissions)}",
                Gcloud(
                    (
                        "gcloud",
                        "iam",
                        "roles",
                        "create",
                        role.role_id,
                        f"--project={names.project}",
                        f"--title={role.title}",
                        f"--permissions={permissions}",
                        "--stage=GA",
                    ),
                    probe=Probe(describe, "succeeds"),
                ),
                key=f"custom-role:{role.role_id}",
            ),
            Step(
                f"Custom role {role.role_id} holds exactly its permissions",
                Gcloud(
                    (
                        "gcloud",
                        "iam",
                        "roles",
                        "update",
                        role.role_id,
                        f"--project={names.project}",
                        f"--permissions={permissions}",
                    ),
                    probe=Probe(
                        (*describe, "--flatten=includedPermissions", "--format=value(includedPermissions)"),
                        "lists",
                        role.permissions,
                    ),
                ),
                key=f"custom-role-permissions:{role.role_id}",
            ),
        ]
    return steps


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
    """Bindings on projects, buckets, topics and accounts (gcloud); see ``endpoint_grant_steps``."""
    return [_binding_step(names, g, add=True) for g in grant_list if g.scope != "endpoint"]


def endpoint_grant_steps(names: Names, grant_list: list[Grant]) -> list[Step]:
    """Bindings on the endpoint's own IAM policy (no gcloud command sets one): after the endpoint step.
    Deleting the endpoint deletes its policy, so destroy has nothing to revoke here."""
    return [
        Step(
            f"{g.role} for {g.who} on endpoint {g.resource}: {g.why}",
            ApiCall(
                vertex_calls.ensure_endpoint_binding,
                {
                    "endpoint": g.resource,
                    "role": g.role,
                    "member": g.principal(names),
                },
            ),
            key=f"grant:{g.account}:{g.role}:endpoint",
        )
        for g in grant_list
        if g.scope == "endpoint"
    ]


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
    member = grant.principal(names)
    where = f"{grant.scope} {grant.resource}"
    who = f"{grant.account}:{grant.member}" if grant.member else grant.account
    key = f"{'grant' if add else 'revoke'}:{who}:{grant.role}:{grant.scope}:{grant.resource}"
    if add:
        return binding_step(
            key,
            f"{grant.role} for {grant.who} on {where}: {grant.why}",
            grant.scope,
            grant.resource,
            member,
            grant.role,
            names.project,
        )
    command, target = _scope_command(grant.scope, grant.resource, names.project)
    extra = ("--condition=None",) if grant.scope == "project" else ()
    return Step(
        f"Remove {grant.role} for {grant.who} on {where}",
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
    if scope == "service-account":
        return ("gcloud", "iam", "service-accounts"), (resource, f"--project={project}")
    raise ValueError(f"no gcloud command sets IAM on a Vertex AI {scope}: use endpoint_grant_steps")


def _describe_account(email: str, project: str) -> tuple[str, ...]:
    return ("gcloud", "iam", "service-accounts", "describe", email, f"--project={project}")
