"""The dashboard, alert policies and log metric deploy creates and destroy removes, against fakes of
the Cloud Monitoring and Logging clients (the real proto types)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import monitoring_dashboard_v1, monitoring_v3

from deploy.gcp import monitoring
from deploy.gcp.destroy import destroy_steps
from deploy.gcp.plan import ApiCall
from deploy.gcp.steps import deploy_steps
from tests.unit.test_deploy_cloud_plan import sample_options, sample_settings


class FakeMonitoring:
    """Dashboards, alert policies and log metrics kept in dicts, named as the services name them."""

    def __init__(self) -> None:
        self.boards: dict[str, Any] = {}
        self.policies: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}

    # dashboards
    def list_dashboards(self, parent: str, timeout: float) -> list[Any]:
        return list(self.boards.values())

    def create_dashboard(self, request: dict[str, Any], timeout: float) -> Any:
        board = request["dashboard"]
        board.name = f"{request['parent']}/dashboards/{len(self.boards)}"
        self.boards[board.name] = board
        return board

    def update_dashboard(self, request: dict[str, Any], timeout: float) -> Any:
        self.boards[request["dashboard"].name] = request["dashboard"]

    def delete_dashboard(self, name: str, timeout: float) -> None:
        del self.boards[name]

    # alert policies
    def list_alert_policies(self, name: str, timeout: float) -> list[Any]:
        return list(self.policies.values())

    def create_alert_policy(self, name: str, alert_policy: Any, timeout: float) -> None:
        alert_policy.name = f"{name}/alertPolicies/{len(self.policies)}"
        self.policies[alert_policy.name] = alert_policy

    def update_alert_policy(self, alert_policy: Any, timeout: float) -> None:
        self.policies[alert_policy.name] = alert_policy

    def delete_alert_policy(self, name: str, timeout: float) -> None:
        del self.policies[name]

    # log metrics
    def get_log_metric(self, metric_name: str, timeout: float) -> Any:
        if metric_name not in self.metrics:
            raise gexc.NotFound(metric_name)
        return self.metrics[metric_name]

    def create_log_metric(self, parent: str, metric: Any, timeout: float) -> None:
        self.metrics[f"{parent}/metrics/{metric.name}"] = metric

    def update_log_metric(self, metric_name: str, metric: Any, timeout: float) -> None:
        self.metrics[metric_name] = metric

    def delete_log_metric(self, metric_name: str, timeout: float) -> None:
        if metric_name not in self.metrics:
            raise gexc.NotFound(metric_name)
        del self.metrics[metric_name]


def fake_clients(fake: FakeMonitoring) -> Any:
    publisher = SimpleNamespace(
        topic_path=lambda project, topic: f"projects/{project}/topics/{topic}",
        list_topic_subscriptions=lambda request, timeout: [
            "projects/p/subscriptions/eventarc-europe-west4-samdrop-on-upload-123",
            "projects/p/subscriptions/someone-elses",
        ],
    )
    endpoint = SimpleNamespace(name="4242")
    vertex = SimpleNamespace(Endpoint=SimpleNamespace(list=lambda filter: [endpoint]))
    clients = SimpleNamespace(project="p", publisher=publisher, vertex=vertex)
    clients.monitoring = monitoring.MonitoringClients(
        dashboards=fake,
        alerts=fake,
        logging=fake,
        metrics=None,
        dashboard_type=monitoring_dashboard_v1.Dashboard,
        policy_type=monitoring_v3.AlertPolicy,
    )
    return clients


def _run(steps, clients) -> list[str]:
    outcomes: list[str] = []
    for step in steps:
        if step.key.startswith(("monitoring-", "delete-monitoring")):
            assert isinstance(step.action, ApiCall)
            outcomes.append(step.action.func(clients, **step.action.args).outcome)
    return outcomes


def test_deploy_creates_the_dashboard_alerts_and_metric_once_and_destroy_removes_them():
    fake = FakeMonitoring()
    clients = fake_clients(fake)
    deploying = deploy_steps(sample_options(), sample_settings())
    assert _run(deploying, clients) == ["created"] * 3
    assert _run(deploying, clients) == ["unchanged"] * 3  # a second deploy changes nothing
    [board] = fake.boards.values()
    titles = [tile.widget.title for tile in board.mosaic_layout.tiles]
    for wanted in (
        "Oldest upload",
        "Dead letters",
        "Images per minute",
        "error code",
        "latency",
        "replicas",
        "GPU",
    ):
        assert any(wanted in title for title in titles), (wanted, titles)
    filters = str(monitoring_dashboard_v1.Dashboard.to_dict(board))
    assert "eventarc-europe-west4-samdrop-on-upload-123" in filters and "someone-elses" not in filters
    assert 'endpoint_id=\\"4242\\"' in filters or 'endpoint_id="4242"' in filters
    names = sorted(p.display_name for p in fake.policies.values())
    assert names == ["samdrop: dead letters", "samdrop: failure ratio", "samdrop: oldest upload waiting"]
    [metric] = fake.metrics.values()
    assert dict(metric.label_extractors)["error_code"] == "EXTRACT(jsonPayload.error_code)"

    fake.policies["other"] = monitoring_v3.AlertPolicy(name="other", display_name="not ours")
    assert _run(destroy_steps(sample_options(), sample_settings()), clients) == ["deleted"]
    assert fake.boards == {} and fake.metrics == {} and list(fake.policies) == ["other"]
    assert _run(destroy_steps(sample_options(), sample_settings()), clients) == ["absent"]


def test_the_dead_letter_alert_fires_on_any_dead_letter_and_the_backlog_one_on_age():
    policies = {p["displayName"]: p for p in monitoring.alert_policies(["eventarc-x"], "dl-sub")}
    dead = policies["samdrop: dead letters"]["conditions"][0]["conditionThreshold"]
    assert dead["thresholdValue"] == 0 and dead["comparison"] == "COMPARISON_GT"
    assert '"dl-sub"' in dead["filter"]
    age = policies["samdrop: oldest upload waiting"]["conditions"][0]["conditionThreshold"]
    assert age["thresholdValue"] == monitoring.OLDEST_UPLOAD_ALERT_S and '"eventarc-x"' in age["filter"]
    for policy in policies.values():  # the real client's type accepts them
        monitoring._message(monitoring_v3.AlertPolicy, policy)
