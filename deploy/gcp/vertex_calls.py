"""Vertex AI steps through ``google-cloud-aiplatform``: upload the SAM model, deploy it to an
endpoint, and take both down.

A model is found again by its display name and the ``samdrop_config`` label, a digest of the upload
arguments: same arguments, same model, nothing uploaded. The endpoint is found by display name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.iam.v1 import policy_pb2

from deploy.gcp.clients import CloudClients
from deploy.gcp.options import CONFIG_LABEL
from deploy.gcp.plan import DeployError, StepResult
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

SERVING_PORT = 8080  # the CPR image's AIP_HTTP_PORT (predictor/Dockerfile)
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"


def ensure_model(
    clients: CloudClients,
    display_name: str,
    image: str,
    artifact_uri: str | None,
    environment: Mapping[str, str],
    labels: Mapping[str, str],
) -> StepResult:
    """The Vertex AI Model serving ``image`` (the CPR container) with the checkpoint folder
    ``artifact_uri``; outputs ``model``, its resource name."""
    vertex = clients.vertex
    existing = vertex.Model.list(filter=_filter(display_name, labels[CONFIG_LABEL]))
    if existing:
        return StepResult("unchanged", existing[0].resource_name, {"model": existing[0].resource_name})
    model = vertex.Model.upload(
        display_name=display_name,
        serving_container_image_uri=image,
        serving_container_predict_route=PREDICT_ROUTE,
        serving_container_health_route=HEALTH_ROUTE,
        serving_container_ports=[SERVING_PORT],
        serving_container_environment_variables=dict(environment),
        artifact_uri=artifact_uri,
        labels=dict(labels),
        sync=True,
    )
    return StepResult("created", model.resource_name, {"model": model.resource_name})


def ensure_deployment(
    clients: CloudClients,
    endpoint_display_name: str,
    model: str,
    machine_type: str,
    accelerator_type: str | None,
    accelerator_count: int,
    min_replicas: int,
    max_replicas: int,
    service_account: str,
) -> StepResult:
    """``model`` deployed on the endpoint named ``endpoint_display_name`` (created if missing) with
    these resources and 100% of the traffic; older deployments are undeployed afterwards so no GPU
    node keeps running for them. Outputs ``endpoint_id``."""
    vertex = clients.vertex
    endpoints = vertex.Endpoint.list(filter=f'display_name="{endpoint_display_name}"')
    if len(endpoints) > 1:
        names = ", ".join(e.resource_name for e in endpoints)
        raise DeployError(f"several endpoints are named {endpoint_display_name}: {names}; delete all but one")
    created = not endpoints
    endpoint = endpoints[0] if endpoints else vertex.Endpoint.create(display_name=endpoint_display_name)
    outputs = {"endpoint_id": endpoint.name}
    wanted = {
        "model": model,
        "machine_type": machine_type,
        "accelerator_type": accelerator_type,
        "accelerator_count": accelerator_count,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "service_account": service_account,
    }
    deployed = list(endpoint.list_models())
    current = [d for d in deployed if _deployment_shape(d) == wanted]
    traffic = dict(endpoint.traffic_split or {})
    if current and traffic.get(current[0].id) == 100 and len(deployed) == 1:
        return StepResult("unchanged", endpoint.resource_name, outputs)
    if not current:
        _deploy(vertex, endpoint, model, wanted)
    else:
        endpoint.update(traffic_split={current[0].id: 100})
    endpoint = vertex.Endpoint(endpoint.resource_name)  # fresh state: ids and traffic after the deploy
    keep = {d.id for d in endpoint.list_models() if _deployment_shape(d) == wanted}
    for old in endpoint.list_models():
        if old.id not in keep:
            endpoint.undeploy(deployed_model_id=old.id)
    return StepResult("created" if created else "updated", endpoint.resource_name, outputs)


def ensure_endpoint_binding(clients: CloudClients, endpoint: str, role: str, member: str) -> StepResult:
    """``role`` for ``member`` in the IAM policy of ``endpoint`` (its resource name) itself, so the
    member may act on this endpoint and no other (Vertex AI's endpoint-level access control)."""
    service = clients.endpoint_service
    policy = service.get_iam_policy(request={"resource": endpoint}, timeout=DEFAULT_REQUEST_TIMEOUT_S)
    if any(b.role == role and member in b.members and not b.condition.expression for b in policy.bindings):
        return StepResult("unchanged", endpoint)
    policy.bindings.append(policy_pb2.Binding(role=role, members=[member]))
    # the policy's etag makes this a read-modify-write: a concurrent change fails instead of being lost
    service.set_iam_policy(
        request={"resource": endpoint, "policy": policy}, timeout=DEFAULT_REQUEST_TIMEOUT_S
    )
    return StepResult("updated", f"{endpoint}: {member} has {role}")


def delete_endpoint(clients: CloudClients, display_name: str) -> StepResult:
    """Undeploy every model from the endpoint(s) named ``display_name`` and delete them."""
    endpoints = clients.vertex.Endpoint.list(filter=f'display_name="{display_name}"')
    for endpoint in endpoints:
        endpoint.undeploy_all()
        endpoint.delete()
    return StepResult("deleted" if endpoints else "absent", ", ".join(e.resource_name for e in endpoints))


def delete_models(clients: CloudClients, display_name: str) -> StepResult:
    """Delete every model named ``display_name`` (all configurations deploy ever uploaded)."""
    models = clients.vertex.Model.list(filter=f'display_name="{display_name}"')
    for model in models:
        model.delete()
    return StepResult("deleted" if models else "absent", ", ".join(m.resource_name for m in models))


def _deploy(vertex: Any, endpoint: Any, model: str, wanted: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "deployed_model_display_name": endpoint.display_name,
        "machine_type": wanted["machine_type"],
        "accelerator_type": wanted["accelerator_type"],
        "accelerator_count": wanted["accelerator_count"],
        "min_replica_count": wanted["min_replicas"],
        "max_replica_count": wanted["max_replicas"],
        "service_account": wanted["service_account"],
        "traffic_percentage": 100,
        "sync": True,
    }
    if wanted["min_replicas"] == 0:
        # Scale to zero exists only in the preview API; the preview classes send its spec.
        preview = vertex.preview.models
        preview.Endpoint(endpoint.resource_name).deploy(model=preview.Model(model), **arguments)
    else:
        endpoint.deploy(model=vertex.Model(model), **arguments)


def _deployment_shape(deployed: Any) -> dict[str, Any]:
    """What deploy sets on a DeployedModel, in the shape of ``ensure_deployment``'s wanted dict."""
    resources = deployed.dedicated_resources
    spec = resources.machine_spec
    accelerator = getattr(spec.accelerator_type, "name", str(spec.accelerator_type))
    return {
        "model": _unversioned(deployed.model),
        "machine_type": spec.machine_type,
        # no GPU reads back as the enum's zero value; deploy asks for None
        "accelerator_type": None if accelerator == "ACCELERATOR_TYPE_UNSPECIFIED" else accelerator,
        "accelerator_count": spec.accelerator_count,
        "min_replicas": resources.min_replica_count,
        "max_replicas": resources.max_replica_count,
        "service_account": deployed.service_account,
    }


def _unversioned(model: str) -> str:
    """``projects/…/models/123@1`` → ``projects/…/models/123`` (DeployedModel names carry a version)."""
    return model.split("@", 1)[0]


def _filter(display_name: str, digest: str) -> str:
    return f'display_name="{display_name}" AND labels.{CONFIG_LABEL}="{digest}"'
