"""The ordered steps of ``samdrop deploy`` (``destroy.py`` holds the way back).

Pure functions of (options, settings): no network, no credentials, so ``--dry-run`` and the golden
plan test build exactly what a real run executes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from deploy.gcp import (
    function_source,
    iam,
    monitoring,
    pubsub_calls,
    storage_calls,
    vertex_calls,
    weights_calls,
)
from deploy.gcp.options import (
    CONFIG_LABEL,
    ENDPOINT_NAME,
    FUNCTION_NAME,
    PIPELINE_TEMPLATE_OBJECT,
    REPOSITORY,
    DeployOptions,
    checkpoint_folder,
)
from deploy.gcp.plan import ApiCall, Gcloud, Probe, Step
from samdrop.models import BY_NAME, META_FILE
from samdrop.settings import Settings

APIS = (
    "storage.googleapis.com",
    "pubsub.googleapis.com",
    "aiplatform.googleapis.com",
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "eventarc.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",  # the dashboard and alert policies (deploy/gcp/monitoring.py)
    "cloudtrace.googleapis.com",  # spans, when SAMDROP_TRACES=cloud (samdrop/tracing.py)
)
PUBSUB_AGENT = "serviceAccount:service-${project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
GCS_AGENT = "serviceAccount:${gcs_service_agent}"
# Settings that only mean something on the deploying machine (local stack, caches).
LOCAL_ONLY = frozenset(
    {
        "SAMDROP_STATE_DIR",
        "SAMDROP_CACHE_DIR",
        "SAMDROP_GCS_PORT",
        "SAMDROP_PUBSUB_PORT",
        "SAMDROP_PREDICTOR_PORT",
        "SAMDROP_FUNCTION_PORT",
        "SAMDROP_UPLOADS_SUBSCRIPTION",
    }
)


def deployed_settings(options: DeployOptions, settings: Settings) -> Settings:
    """The settings the function runs with: ``settings`` pointed at the deployed resources."""
    names = options.names
    return settings.replace(
        project=options.project,
        region=options.region,
        bucket=options.bucket,
        results_bucket=options.results,
        model_type=options.model_type,
        checkpoint=options.checkpoint_uri,
        endpoint=names.endpoint,
        pipeline_runner="vertex",
        pipeline_template=names.pipeline_template,
        pipeline_root=names.pipeline_root,
        pipeline_service_account=names.service_account("pipeline"),
        pipeline_image=names.image,
        pipeline_machine_type=options.machine_type,
        pipeline_accelerator_type=options.accelerator or "",
        pipeline_accelerator_count=options.accelerators,
    )


def function_env(settings: Settings) -> dict[str, str]:
    """``SAMDROP_*`` variables for the function: what differs from the defaults (the function
    rebuilds the rest itself), always the resource names, never the deployer's local paths."""
    defaults = Settings().to_env()
    always = {
        "SAMDROP_PROJECT",
        "SAMDROP_REGION",
        "SAMDROP_BUCKET",
        "SAMDROP_ENDPOINT",
        "SAMDROP_MODEL_TYPE",
        "SAMDROP_PIPELINE_MACHINE_TYPE",
        "SAMDROP_PIPELINE_ACCELERATOR_TYPE",
        "SAMDROP_PIPELINE_ACCELERATOR_COUNT",
    }
    return {
        key: value
        for key, value in sorted(settings.to_env().items())
        if key not in LOCAL_ONLY and (key in always or defaults.get(key) != value)
    }


def deploy_steps(options: DeployOptions, settings: Settings, *, repo_root: str = ".") -> list[Step]:
    """Everything ``samdrop deploy`` does, in dependency order. ``repo_root``: the checkout, as the
    gcloud commands will see it from the current directory."""
    options.validate()
    s = deployed_settings(options, settings)
    names = options.names
    project, region = options.project, options.region
    grant_list = iam.grants(options, s.completions_topic)
    steps = [
        Step(
            "Enable the Google Cloud APIs samdrop uses",
            Gcloud(
                ("gcloud", "services", "enable", *APIS, f"--project={project}"),
                probe=Probe(
                    (
                        "gcloud",
                        "services",
                        "list",
                        "--enabled",
                        f"--project={project}",
                        "--format=value(config.name)",
                    ),
                    "prints",
                    APIS,
                ),
            ),
            key="apis",
        ),
        Step(
            "Read the project number (names the Pub/Sub service agent)",
            Gcloud(
                ("gcloud", "projects", "describe", project, "--format=value(projectNumber)"),
                output="project_number",
            ),
            key="project-number",
        ),
        Step(
            "Read the Cloud Storage service agent (publishes the bucket's notifications)",
            Gcloud(
                ("gcloud", "storage", "service-agent", f"--project={project}"), output="gcs_service_agent"
            ),
            key="gcs-service-agent",
        ),
    ]
    for bucket in (s.bucket, s.output_bucket, options.pipelines, options.models):
        steps += [
            Step(
                f"Bucket gs://{bucket} in {region}",
                ApiCall(storage_calls.ensure_bucket, {"name": bucket, "location": region}),
                key=f"bucket:{bucket}",
            ),
            Step(
                f"Uniform bucket-level access and public access prevention on gs://{bucket}",
                ApiCall(storage_calls.ensure_bucket_access, {"name": bucket}),
                key=f"bucket-access:{bucket}",
            ),
        ]
    for topic in (s.uploads_topic, s.completions_topic, s.dead_letter_topic):
        steps.append(
            Step(f"Topic {topic}", ApiCall(pubsub_calls.ensure_topic, {"name": topic}), key=f"topic:{topic}")
        )
    steps += [
        Step(
            f"Pull subscription {s.dead_letter_subscription} keeping dead letters "
            "(Pub/Sub drops messages to a topic without subscriptions)",
            ApiCall(
                pubsub_calls.ensure_pull_subscription,
                {"name": s.dead_letter_subscription, "topic": s.dead_letter_topic, "ack_deadline_s": 60},
            ),
            key=f"subscription:{s.dead_letter_subscription}",
        ),
        Step(
            f"Pull subscription {s.completions_subscription} for you to read completions",
            ApiCall(
                pubsub_calls.ensure_pull_subscription,
                {"name": s.completions_subscription, "topic": s.completions_topic, "ack_deadline_s": 60},
            ),
            key=f"subscription:{s.completions_subscription}",
        ),
        iam.binding_step(
            f"grant:gcs-agent:{s.uploads_topic}",
            f"Let the Cloud Storage service agent publish to {s.uploads_topic}",
            "topic",
            s.uploads_topic,
            GCS_AGENT,
            "roles/pubsub.publisher",
            project,
        ),
        Step(
            f"OBJECT_FINALIZE notifications gs://{s.bucket}/{s.incoming_prefix} and "
            f"gs://{s.bucket}/{s.batches_prefix} → {s.uploads_topic} (JSON payload; nothing else "
            "in the bucket publishes)",
            ApiCall(
                storage_calls.ensure_notifications,
                {
                    "bucket": s.bucket,
                    "topic": s.uploads_topic,
                    "event_types": ("OBJECT_FINALIZE",),
                    "payload_format": "JSON_API_V1",
                    "prefixes": (s.incoming_prefix, s.batches_prefix),
                },
            ),
            key="notification",
        ),
        iam.binding_step(
            f"grant:pubsub-agent:{s.dead_letter_topic}",
            f"Let the Pub/Sub service agent forward dead letters to {s.dead_letter_topic}",
            "topic",
            s.dead_letter_topic,
            PUBSUB_AGENT,
            "roles/pubsub.publisher",
            project,
        ),
        *iam.create_account_steps(names),
        *iam.custom_role_steps(names),
        *iam.grant_steps(names, grant_list),
        Step(
            f"Artifact Registry Docker repository {REPOSITORY} in {region}",
            Gcloud(
                (
                    "gcloud",
                    "artifacts",
                    "repositories",
                    "create",
                    REPOSITORY,
                    "--repository-format=docker",
                    f"--location={region}",
                    f"--project={project}",
                    "--description=samdrop images",
                ),
                probe=Probe(
                    describe_repository(region, project),
                    "succeeds",
                ),
            ),
            key="artifact-registry",
        ),
        Step(
            f"Build the predictor image {names.image} with Cloud Build (predictor/Dockerfile)",
            Gcloud(
                (
                    "gcloud",
                    "builds",
                    "submit",
                    repo_root,
                    f"--project={project}",
                    f"--region={region}",
                    f"--config={repo_root}/deploy/cloudbuild.yaml",
                    f"--substitutions=_IMAGE={names.image}",
                ),
                probe=Probe(("gcloud", "artifacts", "docker", "images", "describe", names.image), "succeeds"),
            ),
            key="image",
        ),
        *_weights_steps(options, settings),
        _model_step(options, s),
        Step(
            f"Endpoint {ENDPOINT_NAME}: the model on {_hardware(options)}, "
            f"{options.min_replicas}..{options.max_replicas} replicas"
            + (" (scales to zero when idle)" if options.min_replicas == 0 else "")
            + ", 100% of the traffic",
            ApiCall(
                vertex_calls.ensure_deployment,
                {
                    "endpoint_display_name": ENDPOINT_NAME,
                    "model": "${model}",
                    "machine_type": options.machine_type,
                    "accelerator_type": options.accelerator,
                    "accelerator_count": options.accelerators,
                    "min_replicas": options.min_replicas,
                    "max_replicas": options.max_replicas,
                    "service_account": names.service_account("endpoint"),
                },
            ),
            key="endpoint",
        ),
        *iam.endpoint_grant_steps(names, grant_list),
        Step(
            "Compile the pipeline (pipeline.compile.compile_pipeline) and upload it to "
            + names.pipeline_template,
            ApiCall(
                storage_calls.upload_pipeline_template,
                {
                    "bucket": options.pipelines,
                    "object_name": PIPELINE_TEMPLATE_OBJECT,
                    "image": names.image,
                    "parallelism": s.pipeline_parallelism,
                },
            ),
            key="pipeline-template",
        ),
    ]
    source = str(Path(settings.state_dir) / "deploy" / "function-source")
    steps += [
        Step(
            f"Stage the function source (its packages, main.py, requirements.txt) in {source}",
            ApiCall(function_source.stage_function_source, {"destination": source}),
            key="function-source",
        ),
        _function_step(options, s, source),
        Step(
            "Let the function's account invoke it "
            f"(the Eventarc trigger calls as {names.service_account('function')})",
            Gcloud(
                (
                    "gcloud",
                    "functions",
                    "add-invoker-policy-binding",
                    FUNCTION_NAME,
                    f"--region={region}",
                    f"--project={project}",
                    f"--member=serviceAccount:{names.service_account('function')}",
                ),
                probe=Probe(
                    (
                        "gcloud",
                        "run",
                        "services",
                        "get-iam-policy",
                        FUNCTION_NAME,
                        f"--region={region}",
                        f"--project={project}",
                        "--format=json",
                    ),
                    "binds",
                    ("roles/run.invoker", f"serviceAccount:{names.service_account('function')}"),
                ),
            ),
            key="function-invoker",
        ),
        Step(
            f"Retry backoff {s.retry_min_backoff_s:g}s..{s.retry_max_backoff_s:g}s and dead-lettering to "
            f"{s.dead_letter_topic} after {s.max_delivery_attempts} attempts on the trigger's subscription",
            ApiCall(
                pubsub_calls.ensure_trigger_dead_lettering,
                {
                    "topic": s.uploads_topic,
                    "dead_letter_topic": s.dead_letter_topic,
                    "max_delivery_attempts": s.max_delivery_attempts,
                    "min_backoff_s": s.retry_min_backoff_s,
                    "max_backoff_s": s.retry_max_backoff_s,
                },
            ),
            key="trigger-dead-letter",
        ),
        Step(
            "Let the Pub/Sub service agent acknowledge dead-lettered messages on the trigger's subscription",
            ApiCall(
                pubsub_calls.grant_trigger_subscriber, {"topic": s.uploads_topic, "member": PUBSUB_AGENT}
            ),
            key="trigger-subscriber",
        ),
    ]
    steps += monitoring.deploy_monitoring_steps(s, FUNCTION_NAME, ENDPOINT_NAME)
    return steps


def _hardware(options: DeployOptions) -> str:
    """``1 x NVIDIA_L4 (g2-standard-8)``, or ``n2-standard-4, no GPU``."""
    if options.accelerator is None:
        return f"{options.machine_type}, no GPU ({options.model_type} runs on CPU)"
    return f"{options.accelerators} x {options.accelerator} ({options.machine_type})"


def _weights_steps(options: DeployOptions, settings: Settings) -> list[Step]:
    """The step copying the weights into the models bucket, if deploy stages any."""
    source, target = options.weights_source, options.checkpoint_uri
    if source is None or target is None:
        return []
    bucket, _, name = target.removeprefix("gs://").partition("/")
    cache_dir = str(settings.cache_dir)
    if BY_NAME[options.model_type].weights == META_FILE:
        description = f"Stage the weights: download {source} (once, into {cache_dir}) and copy it to {target}"
        action = ApiCall(
            weights_calls.stage_file,
            {"url": source, "bucket": bucket, "object_name": name, "cache_dir": cache_dir},
        )
    else:
        description = (
            f"Stage the weights: download the Hugging Face repo {source} (once, into {cache_dir}) and "
            f"copy its files to {target}"
        )
        action = ApiCall(
            weights_calls.stage_repo,
            {"model_type": options.model_type, "bucket": bucket, "prefix": name, "cache_dir": cache_dir},
        )
    return [Step(description, action, key="weights")]


def _weights_phrase(model_type: str, artifact_uri: str | None) -> str:
    """Where the endpoint's weights come from, for the plan's line."""
    info = BY_NAME[model_type]
    if artifact_uri:
        return f" with the checkpoint folder {artifact_uri}"
    if info.random_weights:
        return f" ({model_type}: random weights, masks are meaningless)"
    return f" ({model_type}: no weights)"


def _model_step(options: DeployOptions, settings: Settings) -> Step:
    names = options.names
    artifact_uri = checkpoint_folder(options.checkpoint_uri)
    environment = {"SAMDROP_MODEL_TYPE": options.model_type}
    if settings.traces != "off":  # the predictor's spans join the function's trace (samdrop/tracing.py)
        environment["SAMDROP_TRACES"] = settings.traces
    # the weights' source too: other weights staged into the same folder make a new model, since a
    # deployed one may serve its own copy of the folder (Vertex AI copies artifact_uri for it)
    digest = _digest(
        {
            "image": names.image,
            "artifact_uri": artifact_uri,
            "environment": environment,
            "weights": options.weights_source,
        }
    )
    return Step(
        f"Vertex AI Model {ENDPOINT_NAME} ({options.model_type}) serving the CPR image"
        + _weights_phrase(options.model_type, artifact_uri),
        ApiCall(
            vertex_calls.ensure_model,
            {
                "display_name": ENDPOINT_NAME,
                "image": names.image,
                "artifact_uri": artifact_uri,
                "environment": environment,
                "labels": {
                    "samdrop": "predictor",
                    "samdrop_model": re.sub(
                        r"[^a-z0-9-]", "-", options.model_type
                    ),  # label values: a-z 0-9 _ -
                    CONFIG_LABEL: digest,
                },
            },
        ),
        key="model",
    )


def _function_step(options: DeployOptions, settings: Settings, source: str) -> Step:
    names = options.names
    project, region = options.project, options.region
    account = names.service_account("function")
    argv = (
        "gcloud",
        "functions",
        "deploy",
        FUNCTION_NAME,
        "--gen2",
        f"--region={region}",
        f"--project={project}",
        "--runtime=python311",
        f"--source={source}",
        "--entry-point=on_upload",
        f"--trigger-topic={settings.uploads_topic}",
        "--retry",
        f"--service-account={account}",
        f"--trigger-service-account={account}",
        f"--memory={options.function_memory}",
        f"--cpu={options.function_cpu}",
        f"--concurrency={options.function_concurrency}",
        f"--timeout={options.function_timeout_s}s",
        f"--max-instances={options.function_max_instances}",
        "--ingress-settings=internal-only",
        env_vars_flag(function_env(settings)),
    )
    # The label carries a digest of this command and the code, so an unchanged function is not redeployed.
    digest = _digest({"argv": argv, "source": options.source_digest})
    return Step(
        f"Cloud Function (gen2) {FUNCTION_NAME}: Pub/Sub trigger on {settings.uploads_topic}, "
        "retry on failure",
        Gcloud(
            (*argv, f"--update-labels={CONFIG_LABEL}={digest}", "--quiet"),
            probe=Probe(
                describe_function(region, project, f"value(labels.{CONFIG_LABEL})"), "prints", (digest,)
            ),
        ),
        key="function",
    )


def env_vars_flag(env: dict[str, str]) -> str:
    """``--set-env-vars`` with ``,`` between pairs, or gcloud's ``^@^`` delimiter when a value has a comma."""
    pairs = [f"{key}={value}" for key, value in env.items()]
    if any("," in value for value in env.values()):
        return "--set-env-vars=^@^" + "@".join(pairs)
    return "--set-env-vars=" + ",".join(pairs)


def describe_repository(region: str, project: str) -> tuple[str, ...]:
    return (
        "gcloud",
        "artifacts",
        "repositories",
        "describe",
        REPOSITORY,
        f"--location={region}",
        f"--project={project}",
    )


def describe_function(region: str, project: str, fmt: str) -> tuple[str, ...]:
    return (
        "gcloud",
        "functions",
        "describe",
        FUNCTION_NAME,
        "--gen2",
        f"--region={region}",
        f"--project={project}",
        f"--format={fmt}",
    )


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
