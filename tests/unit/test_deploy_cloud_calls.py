"""The client-library steps against small in-memory stand-ins for the Storage and Vertex AI objects
(the emulator tier covers buckets and Pub/Sub; nothing emulates notifications or Vertex AI)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from deploy.gcp import storage_calls, vertex_calls
from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import DeployError


# --- Cloud Storage -------------------------------------------------------------------------------
class FakeNotification:
    ids = itertools.count(1)

    def __init__(self, bucket, topic_name, topic_project, event_types, payload_format, blob_name_prefix=None):
        self.bucket = bucket
        self.topic_name = topic_name
        self.topic_project = topic_project
        self.event_types = event_types
        self.payload_format = payload_format
        self.blob_name_prefix = blob_name_prefix
        self.notification_id = None

    def create(self, timeout):
        self.notification_id = str(next(self.ids))
        self.bucket.notifications.append(self)

    def delete(self, timeout):
        self.bucket.notifications.remove(self)
        self.bucket.deleted.append(self.notification_id)


class FakeBucket:
    def __init__(self):
        self.notifications = []
        self.deleted = []
        self.iam_configuration = SimpleNamespace(
            uniform_bucket_level_access_enabled=False, public_access_prevention="inherited"
        )
        self.patches = 0

    def list_notifications(self, timeout):
        return list(self.notifications)

    def notification(self, **kwargs):
        return FakeNotification(self, **kwargs)

    def patch(self, timeout):
        self.patches += 1


class FakeStorage:
    def __init__(self):
        self.buckets = {}

    def bucket(self, name):
        return self.buckets.setdefault(name, FakeBucket())

    def get_bucket(self, name, timeout):
        return self.bucket(name)


def storage_clients():
    return CloudClients("proj", "us-central1", storage_client=FakeStorage())  # type: ignore[arg-type]


NOTIFY: dict[str, Any] = {
    "bucket": "b",
    "topic": "uploads",
    "event_types": ("OBJECT_FINALIZE",),
    "payload_format": "JSON_API_V1",
    "prefixes": ("incoming/", "batches/"),
}


def ours(bucket: FakeBucket) -> list[tuple[str, str | None]]:
    return sorted((n.topic_name, n.blob_name_prefix) for n in bucket.notifications)


def test_one_notification_per_prefix_is_created_once_then_left_alone():
    clients = storage_clients()
    first = storage_calls.ensure_notifications(clients, **NOTIFY)
    again = storage_calls.ensure_notifications(clients, **NOTIFY)
    assert (first.outcome, again.outcome) == ("created", "unchanged")
    bucket = clients.storage.bucket("b")
    assert ours(bucket) == [("uploads", "batches/"), ("uploads", "incoming/")]
    for notification in bucket.notifications:
        assert (notification.topic_project, notification.event_types) == ("proj", ["OBJECT_FINALIZE"])
        assert notification.payload_format == "JSON_API_V1"


def test_an_unfiltered_notification_is_replaced_by_filtered_ones_and_other_topics_stay():
    """A bucket deployed before prefixes existed: its one notification fired for every write,
    results included."""
    clients = storage_clients()
    bucket = clients.storage.bucket("b")
    FakeNotification(bucket, "uploads", "proj", ["OBJECT_FINALIZE"], "JSON_API_V1").create(timeout=1)
    FakeNotification(bucket, "uploads", "proj", ["OBJECT_DELETE"], "NONE", "incoming/").create(timeout=1)
    FakeNotification(bucket, "someone-else", "proj", ["OBJECT_FINALIZE"], "JSON_API_V1").create(timeout=1)
    result = storage_calls.ensure_notifications(clients, **NOTIFY)
    assert result.outcome == "updated"
    assert ours(bucket) == [("someone-else", None), ("uploads", "batches/"), ("uploads", "incoming/")]
    assert len(bucket.deleted) == 2


def test_a_kept_prefix_is_not_recreated_and_duplicates_collapse_to_one():
    clients = storage_clients()
    bucket = clients.storage.bucket("b")
    for _ in range(2):  # one finalize would otherwise trigger the function twice
        FakeNotification(bucket, "uploads", "proj", ["OBJECT_FINALIZE"], "JSON_API_V1", "incoming/").create(1)
    kept = bucket.notifications[0].notification_id
    assert storage_calls.ensure_notifications(clients, **NOTIFY).outcome == "updated"
    assert ours(bucket) == [("uploads", "batches/"), ("uploads", "incoming/")]
    assert kept in {n.notification_id for n in bucket.notifications}


def test_delete_notifications_removes_only_ours():
    clients = storage_clients()
    bucket = clients.storage.bucket("b")
    storage_calls.ensure_notifications(clients, **NOTIFY)
    FakeNotification(bucket, "other", "proj", ["OBJECT_FINALIZE"], "JSON_API_V1").create(timeout=1)
    assert storage_calls.delete_notifications(clients, "b", "uploads").outcome == "deleted"
    assert storage_calls.delete_notifications(clients, "b", "uploads").outcome == "absent"
    assert [n.topic_name for n in bucket.notifications] == ["other"]


def test_bucket_access_is_tightened_once():
    clients = storage_clients()
    assert storage_calls.ensure_bucket_access(clients, "b").outcome == "updated"
    config = clients.storage.bucket("b").iam_configuration
    assert config.uniform_bucket_level_access_enabled and config.public_access_prevention == "enforced"
    assert storage_calls.ensure_bucket_access(clients, "b").outcome == "unchanged"
    assert clients.storage.bucket("b").patches == 1


# --- Vertex AI -----------------------------------------------------------------------------------
class FakeModel:
    def __init__(self, resource_name, **kwargs):
        self.resource_name = resource_name
        self.kwargs = kwargs
        self.deleted = False

    def delete(self):
        self.deleted = True


class FakeDeployed:
    def __init__(self, deployed_id, model, args):
        self.id = deployed_id
        self.model = model + "@1"  # DeployedModel names carry the version
        self.service_account = args["service_account"]
        self.dedicated_resources = SimpleNamespace(
            machine_spec=SimpleNamespace(
                machine_type=args["machine_type"],
                # a CPU deployment reads back as the enum's zero value, as the real proto does
                accelerator_type=SimpleNamespace(
                    name=args["accelerator_type"] or "ACCELERATOR_TYPE_UNSPECIFIED"
                ),
                accelerator_count=args["accelerator_count"],
            ),
            min_replica_count=args["min_replica_count"],
            max_replica_count=args["max_replica_count"],
        )


class FakeEndpoint:
    def __init__(self, vertex, name, display_name):
        self.vertex = vertex
        self.name = name
        self.resource_name = f"projects/123/locations/us-central1/endpoints/{name}"
        self.display_name = display_name
        self.deployed = []
        self.traffic_split = {}
        self.deleted = False

    def list_models(self):
        return list(self.deployed)

    def deploy(self, model, **args):
        self.vertex.deploy_calls.append(args)
        deployed = FakeDeployed(str(next(self.vertex.ids)), model.resource_name, args)
        self.deployed.append(deployed)
        self.traffic_split = {deployed.id: args["traffic_percentage"]}
        for other in self.deployed[:-1]:
            self.traffic_split[other.id] = 0

    def update(self, traffic_split):
        self.traffic_split = dict(traffic_split)

    def undeploy(self, deployed_model_id):
        self.deployed = [d for d in self.deployed if d.id != deployed_model_id]
        self.traffic_split.pop(deployed_model_id, None)

    def undeploy_all(self):
        self.deployed, self.traffic_split = [], {}

    def delete(self):
        self.deleted = True
        self.vertex.endpoints.remove(self)


class FakeVertex:
    """``Model`` and ``Endpoint`` as the aiplatform module offers them, over in-memory state."""

    def __init__(self):
        self.models: list[Any] = []
        self.endpoints: list[Any] = []
        self.deploy_calls = []
        self.filters: list[Any] = []
        self.ids = itertools.count(100)
        vertex = self

        class Model:
            def __new__(cls, resource_name):
                return next(m for m in vertex.models if m.resource_name == resource_name)

            @staticmethod
            def list(filter):
                vertex.filters.append(filter)
                return [m for m in vertex.models if _matches(filter, m)]

            @staticmethod
            def upload(**kwargs):
                model = FakeModel(f"projects/123/locations/us-central1/models/{next(vertex.ids)}", **kwargs)
                vertex.models.append(model)
                return model

        class Endpoint:
            def __new__(cls, resource_name):
                return next(e for e in vertex.endpoints if e.resource_name == resource_name)

            @staticmethod
            def list(filter):
                return [e for e in vertex.endpoints if filter == f'display_name="{e.display_name}"']

            @staticmethod
            def create(display_name):
                endpoint = FakeEndpoint(vertex, str(next(vertex.ids)), display_name)
                vertex.endpoints.append(endpoint)
                return endpoint

        class PreviewEndpoint:
            def __new__(cls, resource_name):
                return Endpoint(resource_name)

        self.Model = Model
        self.Endpoint = Endpoint
        self.preview = SimpleNamespace(models=SimpleNamespace(Endpoint=PreviewEndpoint, Model=Model))


def _matches(filter_text, model):
    labels = model.kwargs.get("labels", {})
    clauses = [c.strip() for c in filter_text.split(" AND ")]
    for clause in clauses:
        key, value = clause.split("=", 1)
        value = value.strip('"')
        if key == "display_name" and model.kwargs["display_name"] != value:
            return False
        if key.startswith("labels.") and labels.get(key.removeprefix("labels.")) != value:
            return False
    return True


def vertex_clients():
    return CloudClients("proj", "us-central1", vertex=FakeVertex())


MODEL: dict[str, Any] = {
    "display_name": "samdrop-sam",
    "image": "us-central1-docker.pkg.dev/p/samdrop/predictor:v1",
    "artifact_uri": "gs://models/sam/",
    "environment": {"SAMDROP_MODEL_TYPE": "vit_h"},
    "labels": {"samdrop": "predictor", "samdrop_config": "abc"},
}
DEPLOYMENT: dict[str, Any] = {
    "endpoint_display_name": "samdrop-sam",
    "machine_type": "g2-standard-8",
    "accelerator_type": "NVIDIA_L4",
    "accelerator_count": 1,
    "min_replicas": 1,
    "max_replicas": 2,
    "service_account": "samdrop-endpoint@p.iam.gserviceaccount.com",
}


def test_model_is_uploaded_once_per_configuration():
    clients = vertex_clients()
    first = vertex_calls.ensure_model(clients, **MODEL)
    again = vertex_calls.ensure_model(clients, **MODEL)
    assert (first.outcome, again.outcome) == ("created", "unchanged")
    assert first.outputs == again.outputs
    (model,) = clients.vertex.models
    assert model.kwargs["serving_container_predict_route"] == "/predict"
    assert model.kwargs["serving_container_health_route"] == "/health"
    assert model.kwargs["serving_container_ports"] == [8080]
    assert model.kwargs["artifact_uri"] == "gs://models/sam/"
    other = vertex_calls.ensure_model(
        clients, **{**MODEL, "labels": {"samdrop": "predictor", "samdrop_config": "def"}}
    )
    assert other.outcome == "created" and len(clients.vertex.models) == 2


def test_deployment_creates_the_endpoint_and_sends_all_traffic_once():
    clients = vertex_clients()
    model = vertex_calls.ensure_model(clients, **MODEL).outputs["model"]
    first = vertex_calls.ensure_deployment(clients, model=model, **DEPLOYMENT)
    again = vertex_calls.ensure_deployment(clients, model=model, **DEPLOYMENT)
    assert (first.outcome, again.outcome) == ("created", "unchanged")
    (endpoint,) = clients.vertex.endpoints
    assert first.outputs == {"endpoint_id": endpoint.name}
    (call,) = clients.vertex.deploy_calls
    assert call["traffic_percentage"] == 100
    assert (
        call["machine_type"],
        call["accelerator_type"],
        call["min_replica_count"],
        call["max_replica_count"],
    ) == ("g2-standard-8", "NVIDIA_L4", 1, 2)


def test_a_new_configuration_replaces_the_old_deployment():
    clients = vertex_clients()
    model = vertex_calls.ensure_model(clients, **MODEL).outputs["model"]
    vertex_calls.ensure_deployment(clients, model=model, **DEPLOYMENT)
    changed = vertex_calls.ensure_deployment(clients, model=model, **{**DEPLOYMENT, "max_replicas": 4})
    assert changed.outcome == "updated"
    (endpoint,) = clients.vertex.endpoints
    (deployed,) = endpoint.deployed  # the old one no longer holds a GPU
    assert deployed.dedicated_resources.max_replica_count == 4
    assert endpoint.traffic_split == {deployed.id: 100}


def test_scale_to_zero_goes_through_the_preview_api():
    clients = vertex_clients()
    model = vertex_calls.ensure_model(clients, **MODEL).outputs["model"]
    calls = []
    preview_endpoint = clients.vertex.preview.models.Endpoint

    class RecordingPreview:
        def __new__(cls, resource_name):
            calls.append(resource_name)
            return preview_endpoint(resource_name)

    clients.vertex.preview.models.Endpoint = RecordingPreview
    vertex_calls.ensure_deployment(clients, model=model, **{**DEPLOYMENT, "min_replicas": 0})
    assert calls == [clients.vertex.endpoints[0].resource_name]
    assert clients.vertex.deploy_calls[0]["min_replica_count"] == 0


def test_a_cpu_deployment_has_no_accelerator_and_is_left_alone_the_second_time():
    clients = vertex_clients()
    model = vertex_calls.ensure_model(clients, **MODEL).outputs["model"]
    cpu = {**DEPLOYMENT, "machine_type": "n2-standard-4", "accelerator_type": None, "accelerator_count": 0}
    first = vertex_calls.ensure_deployment(clients, model=model, **cpu)
    again = vertex_calls.ensure_deployment(clients, model=model, **cpu)
    assert (first.outcome, again.outcome) == ("created", "unchanged")
    (call,) = clients.vertex.deploy_calls
    hardware = (call["machine_type"], call["accelerator_type"], call["accelerator_count"])
    assert hardware == ("n2-standard-4", None, 0)


def test_two_endpoints_with_our_name_is_an_error():
    clients = vertex_clients()
    clients.vertex.Endpoint.create("samdrop-sam")
    clients.vertex.Endpoint.create("samdrop-sam")
    with pytest.raises(DeployError, match="several endpoints are named samdrop-sam"):
        vertex_calls.ensure_deployment(clients, model="m", **DEPLOYMENT)


def test_destroy_undeploys_deletes_endpoint_and_models():
    clients = vertex_clients()
    model = vertex_calls.ensure_model(clients, **MODEL).outputs["model"]
    vertex_calls.ensure_deployment(clients, model=model, **DEPLOYMENT)
    (endpoint,) = clients.vertex.endpoints
    assert vertex_calls.delete_endpoint(clients, "samdrop-sam").outcome == "deleted"
    assert endpoint.deleted and endpoint.deployed == []
    assert vertex_calls.delete_endpoint(clients, "samdrop-sam").outcome == "absent"
    assert vertex_calls.delete_models(clients, "samdrop-sam").outcome == "deleted"
    assert all(m.deleted for m in clients.vertex.models)


def test_a_bucket_name_owned_elsewhere_says_choose_another():
    from google.api_core import exceptions as gexc

    class ForeignStorage(FakeStorage):
        def lookup_bucket(self, name, timeout):
            raise gexc.Forbidden("caller does not have storage.buckets.get access")

    clients = CloudClients("proj", "us-central1", storage_client=ForeignStorage())  # type: ignore[arg-type]
    with pytest.raises(DeployError, match="choose another --bucket"):
        storage_calls.ensure_bucket(clients, "taken", "us-central1")


# --- Pub/Sub IAM on the trigger's subscription (the emulator has no IAM) --------------------------
class FakePublisher:
    @staticmethod
    def topic_path(project, name):
        return f"projects/{project}/topics/{name}"

    def list_topic_subscriptions(self, request, timeout):
        assert request == {"topic": "projects/proj/topics/uploads"}
        return [
            "projects/proj/subscriptions/eventarc-us-central1-fn-1-sub-2",
            "projects/proj/subscriptions/mine",
        ]


class FakeIamSubscriber:
    def __init__(self):
        from google.iam.v1 import policy_pb2

        self.policies = {}
        self.sets = []
        self.policy_type = policy_pb2.Policy

    def get_iam_policy(self, request, timeout):
        policy = self.policy_type()
        policy.CopyFrom(self.policies.get(request["resource"], self.policy_type()))
        return policy

    def set_iam_policy(self, request, timeout):
        self.sets.append(request["resource"])
        self.policies[request["resource"]] = request["policy"]


def test_pubsub_agent_may_acknowledge_on_the_eventarc_subscription_only():
    subscriber = FakeIamSubscriber()
    clients = CloudClients("proj", "us-central1", publisher=FakePublisher(), subscriber=subscriber)  # type: ignore[arg-type]
    member = "serviceAccount:service-123@gcp-sa-pubsub.iam.gserviceaccount.com"
    from deploy.gcp import pubsub_calls

    assert pubsub_calls.grant_trigger_subscriber(clients, "uploads", member).outcome == "updated"
    assert pubsub_calls.grant_trigger_subscriber(clients, "uploads", member).outcome == "unchanged"
    eventarc = "projects/proj/subscriptions/eventarc-us-central1-fn-1-sub-2"
    assert subscriber.sets == [eventarc]
    (binding,) = subscriber.policies[eventarc].bindings
    assert (binding.role, list(binding.members)) == ("roles/pubsub.subscriber", [member])


# --- the endpoint's own IAM policy (Vertex AI endpoint-level access control) ---------------------
def test_predict_is_granted_on_the_endpoint_itself_once():
    from google.iam.v1 import policy_pb2

    service = FakeIamSubscriber()  # get_iam_policy/set_iam_policy by resource, as the endpoint service
    endpoint = "projects/proj/locations/us-central1/endpoints/42"
    other = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="roles/aiplatform.viewer", members=["user:a@b"])]
    )
    service.policies[endpoint] = other
    clients = CloudClients("proj", "us-central1", endpoint_service=service)
    member = "serviceAccount:samdrop-function@proj.iam.gserviceaccount.com"
    role = "projects/proj/roles/samdropPredict"
    assert vertex_calls.ensure_endpoint_binding(clients, endpoint, role, member).outcome == "updated"
    assert vertex_calls.ensure_endpoint_binding(clients, endpoint, role, member).outcome == "unchanged"
    assert service.sets == [endpoint]
    bindings = {(b.role, tuple(b.members)) for b in service.policies[endpoint].bindings}
    assert bindings == {("roles/aiplatform.viewer", ("user:a@b",)), (role, (member,))}, (
        "others' bindings stay"
    )


def test_a_conditional_binding_does_not_count_as_the_grant():
    from google.iam.v1 import policy_pb2
    from google.type import expr_pb2

    service = FakeIamSubscriber()
    endpoint = "projects/proj/locations/us-central1/endpoints/42"
    member, role = "serviceAccount:f@proj.iam.gserviceaccount.com", "projects/proj/roles/samdropPredict"
    expiring = expr_pb2.Expr(expression="request.time < timestamp('2020-01-01T00:00:00Z')", title="old")
    service.policies[endpoint] = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role=role, members=[member], condition=expiring)]
    )
    clients = CloudClients("proj", "us-central1", endpoint_service=service)
    assert vertex_calls.ensure_endpoint_binding(clients, endpoint, role, member).outcome == "updated"
