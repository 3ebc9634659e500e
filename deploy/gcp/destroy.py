"""The ordered steps of ``samdrop destroy``: what deploy created, in reverse order.

The buckets and their objects stay unless ``delete_data``; the APIs stay enabled (other things may
use them), and so do the custom roles: bound to nobody they grant nothing, and a deleted custom
role's id stays taken for 7 days, which would make a redeploy within that week fail. Like
deploy's, a pure function of (options, settings).
"""

from __future__ import annotations

from deploy.gcp import iam, monitoring, pubsub_calls, storage_calls, vertex_calls
from deploy.gcp.options import (
    ENDPOINT_NAME,
    FUNCTION_NAME,
    PIPELINE_TEMPLATE_OBJECT,
    REPOSITORY,
    DeployOptions,
)
from deploy.gcp.plan import ApiCall, Gcloud, Probe, Step
from deploy.gcp.steps import deployed_settings, describe_function, describe_repository
from samdrop.settings import Settings


def destroy_steps(options: DeployOptions, settings: Settings, *, delete_data: bool = False) -> list[Step]:
    """What ``samdrop destroy`` does: deploy's resources in reverse order. The bucket and its
    objects stay unless ``delete_data``; the APIs stay enabled (other things may use them)."""
    options.validate()
    s = deployed_settings(options, settings)
    names = options.names
    project, region = options.project, options.region
    steps = [
        *monitoring.destroy_monitoring_steps(),
        Step(
            f"Undeploy the models from endpoint {ENDPOINT_NAME} and delete it",
            ApiCall(vertex_calls.delete_endpoint, {"display_name": ENDPOINT_NAME}),
            key="delete-endpoint",
        ),
        Step(
            f"Delete the Vertex AI models named {ENDPOINT_NAME}",
            ApiCall(vertex_calls.delete_models, {"display_name": ENDPOINT_NAME}),
            key="delete-models",
        ),
        Step(
            f"Delete the function {FUNCTION_NAME} (its Eventarc trigger and subscription go with it)",
            Gcloud(
                (
                    "gcloud",
                    "functions",
                    "delete",
                    FUNCTION_NAME,
                    "--gen2",
                    f"--region={region}",
                    f"--project={project}",
                    "--quiet",
                ),
                probe=Probe(describe_function(region, project, "value(name)"), "fails"),
            ),
            key="delete-function",
        ),
        Step(
            f"Delete the notifications gs://{s.bucket} → {s.uploads_topic}",
            ApiCall(storage_calls.delete_notifications, {"bucket": s.bucket, "topic": s.uploads_topic}),
            key="delete-notification",
        ),
        Step(
            f"Delete the pipeline template {names.pipeline_template}",
            ApiCall(
                storage_calls.delete_object,
                {"bucket": options.pipelines, "object_name": PIPELINE_TEMPLATE_OBJECT},
            ),
            key="delete-pipeline-template",
        ),
    ]
    for subscription in (s.completions_subscription, s.dead_letter_subscription):
        steps.append(
            Step(
                f"Delete subscription {subscription}",
                ApiCall(pubsub_calls.delete_subscription, {"name": subscription}),
                key=f"delete-subscription:{subscription}",
            )
        )
    for topic in (s.uploads_topic, s.completions_topic, s.dead_letter_topic):
        steps.append(
            Step(
                f"Delete topic {topic}",
                ApiCall(pubsub_calls.delete_topic, {"name": topic}),
                key=f"delete-topic:{topic}",
            )
        )
    steps += iam.revoke_steps(names, iam.grants(options, s.completions_topic))
    steps += iam.delete_account_steps(names)
    steps.append(
        Step(
            f"Delete the Artifact Registry repository {REPOSITORY} and its images",
            Gcloud(
                (
                    "gcloud",
                    "artifacts",
                    "repositories",
                    "delete",
                    REPOSITORY,
                    f"--location={region}",
                    f"--project={project}",
                    "--quiet",
                ),
                probe=Probe(
                    describe_repository(region, project),
                    "fails",
                ),
            ),
            key="delete-artifact-registry",
        )
    )
    if delete_data:
        for bucket in (options.models, options.pipelines, s.output_bucket, s.bucket):
            steps.append(
                Step(
                    f"Delete gs://{bucket} with every object in it (--delete-data)",
                    Gcloud(
                        ("gcloud", "storage", "rm", "--recursive", f"gs://{bucket}"),
                        probe=Probe(("gcloud", "storage", "buckets", "describe", f"gs://{bucket}"), "fails"),
                    ),
                    key=f"delete-bucket:{bucket}",
                )
            )
    return steps
