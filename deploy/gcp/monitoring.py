"""Watching a deployment: the per-image log-based metric, the dashboard and the alert policies that
``samdrop deploy`` creates and ``samdrop destroy`` removes, and what ``samdrop status --project``
reads back (:class:`MonitoringReader`).

Everything is found again by name (the log metric's id, the dashboard's and the policies' display
names), so deploying twice updates in place and destroy needs no record of ids. What each alert
means and what to do about it: docs/operations.md "Operating it".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deploy.gcp.plan import ApiCall, Outcome, Step, StepResult
from deploy.resources import TIMEOUT_S
from samdrop.settings import Settings

if TYPE_CHECKING:
    from deploy.gcp.clients import CloudClients

IMAGES_METRIC = "samdrop_images"  # logging.googleapis.com/user/samdrop_images{outcome, error_code}
DASHBOARD_NAME = "samdrop"
ALERT_PREFIX = "samdrop: "
OLDEST_UPLOAD_ALERT_S = 900  # an upload waiting 15 minutes: the function or the endpoint is stuck
FAILURE_RATIO_ALERT = 0.1  # over 10% of images failed over ten minutes
ALERT_WINDOW_S = 600
SUBSCRIPTION = 'resource.type="pubsub_subscription"'
ENDPOINT = 'resource.type="aiplatform.googleapis.com/Endpoint"'


def images_filter(function_name: str) -> str:
    """The function's one line per image (functions/handler.py): succeeded or failed."""
    return (
        f'resource.type="cloud_run_revision" AND resource.labels.service_name="{function_name}" '
        'AND jsonPayload.outcome=("succeeded" OR "failed")'
    )


def _subscription_metric(metric: str, subscriptions: list[str]) -> str:
    ids = ", ".join(f'"{s}"' for s in subscriptions) or '""'
    return (
        f'{SUBSCRIPTION} AND metric.type="pubsub.googleapis.com/subscription/{metric}" '
        f"AND resource.labels.subscription_id = one_of({ids})"
    )


def _images(outcome: str | None = None) -> str:
    where = f' AND metric.labels.outcome="{outcome}"' if outcome else ""
    return f'metric.type="logging.googleapis.com/user/{IMAGES_METRIC}"{where}'


def _chart(
    title: str, query: str, *, aligner: str = "ALIGN_MEAN", group_by: tuple[str, ...] = ()
) -> dict[str, Any]:
    aggregation: dict[str, Any] = {"alignmentPeriod": "60s", "perSeriesAligner": aligner}
    if group_by:
        aggregation.update(crossSeriesReducer="REDUCE_SUM", groupByFields=list(group_by))
    return {
        "title": title,
        "xyChart": {
            "dataSets": [
                {
                    "timeSeriesQuery": {"timeSeriesFilter": {"filter": query, "aggregation": aggregation}},
                    "plotType": "LINE",
                }
            ]
        },
    }


def dashboard(uploads: list[str], dead_letter_subscription: str, endpoint_id: str) -> dict[str, Any]:
    """The dashboard: backlog, dead letters, throughput, error codes, endpoint latency, replicas, GPU."""
    endpoint = f'{ENDPOINT} AND resource.labels.endpoint_id="{endpoint_id}"'
    online = "aiplatform.googleapis.com/prediction/online"
    charts = [
        _chart(
            "Oldest upload waiting (s)",
            _subscription_metric("oldest_unacked_message_age", uploads),
            aligner="ALIGN_MAX",
        ),
        _chart(
            "Uploads waiting", _subscription_metric("num_undelivered_messages", uploads), aligner="ALIGN_MAX"
        ),
        _chart(
            "Dead letters",
            _subscription_metric("num_undelivered_messages", [dead_letter_subscription]),
            aligner="ALIGN_MAX",
        ),
        _chart(
            "Images per minute by outcome",
            _images(),
            aligner="ALIGN_DELTA",
            group_by=("metric.label.outcome",),
        ),
        _chart(
            "Failed images by error code",
            _images("failed"),
            aligner="ALIGN_DELTA",
            group_by=("metric.label.error_code",),
        ),
        _chart(
            "Endpoint latency (ms)",
            f'{endpoint} AND metric.type="{online}/prediction_latencies"',
            aligner="ALIGN_PERCENTILE_95",
        ),
        _chart("Endpoint replicas", f'{endpoint} AND metric.type="{online}/replicas"', aligner="ALIGN_MAX"),
        _chart("GPU utilisation (%)", f'{endpoint} AND metric.type="{online}/accelerator/duty_cycle"'),
    ]
    tiles = [
        {"xPos": (i % 2) * 6, "yPos": (i // 2) * 4, "width": 6, "height": 4, "widget": chart}
        for i, chart in enumerate(charts)
    ]
    return {"displayName": DASHBOARD_NAME, "mosaicLayout": {"columns": 12, "tiles": tiles}}


def _threshold(query: str, value: float, *, aligner: str, seconds: int, **extra: Any) -> dict[str, Any]:
    return {
        "filter": query,
        "comparison": "COMPARISON_GT",
        "thresholdValue": value,
        "duration": f"{seconds}s",
        "aggregations": [{"alignmentPeriod": "60s", "perSeriesAligner": aligner}],
        **extra,
    }


def alert_policies(uploads: list[str], dead_letter_subscription: str) -> list[dict[str, Any]]:
    """Dead letters > 0; the oldest upload older than :data:`OLDEST_UPLOAD_ALERT_S`; more than
    :data:`FAILURE_RATIO_ALERT` of the images failed over :data:`ALERT_WINDOW_S`."""
    ratio = {
        "denominatorFilter": _images(),
        "denominatorAggregations": [
            {
                "alignmentPeriod": f"{ALERT_WINDOW_S}s",
                "perSeriesAligner": "ALIGN_DELTA",
                "crossSeriesReducer": "REDUCE_SUM",
            }
        ],
    }
    failed = _threshold(_images("failed"), FAILURE_RATIO_ALERT, aligner="ALIGN_DELTA", seconds=0, **ratio)
    failed["aggregations"] = [
        {
            "alignmentPeriod": f"{ALERT_WINDOW_S}s",
            "perSeriesAligner": "ALIGN_DELTA",
            "crossSeriesReducer": "REDUCE_SUM",
        }
    ]
    conditions = {
        "dead letters": _threshold(
            _subscription_metric("num_undelivered_messages", [dead_letter_subscription]),
            0,
            aligner="ALIGN_MAX",
            seconds=60,
        ),
        "oldest upload waiting": _threshold(
            _subscription_metric("oldest_unacked_message_age", uploads),
            OLDEST_UPLOAD_ALERT_S,
            aligner="ALIGN_MAX",
            seconds=60,
        ),
        "failure ratio": failed,
    }
    return [
        {
            "displayName": ALERT_PREFIX + name,
            "combiner": "OR",
            "conditions": [{"displayName": name, "conditionThreshold": condition}],
            "documentation": {
                "content": "What it means and what to do: docs/operations.md, section Operating it.",
                "mimeType": "text/markdown",
            },
        }
        for name, condition in conditions.items()
    ]


# -- deploy and destroy (ApiCall functions: clients first, idempotent) ---------------------------


def ensure_images_metric(clients: CloudClients, function_name: str) -> StepResult:
    """The log-based counter of the function's per-image lines, labelled by outcome and error code."""
    from google.api import label_pb2, metric_pb2
    from google.api_core import exceptions as gexc
    from google.cloud.logging_v2.types import LogMetric

    client = MonitoringClients.of(clients).logging
    name = f"projects/{clients.project}/metrics/{IMAGES_METRIC}"
    wanted = LogMetric(
        name=IMAGES_METRIC,
        description="samdrop: one per image the function finished (succeeded or failed)",
        filter=images_filter(function_name),
        metric_descriptor=metric_pb2.MetricDescriptor(
            metric_kind=metric_pb2.MetricDescriptor.MetricKind.DELTA,
            value_type=metric_pb2.MetricDescriptor.ValueType.INT64,
            labels=[
                label_pb2.LabelDescriptor(key="outcome"),
                label_pb2.LabelDescriptor(key="error_code"),
            ],
        ),
        label_extractors={
            "outcome": "EXTRACT(jsonPayload.outcome)",
            "error_code": "EXTRACT(jsonPayload.error_code)",
        },
    )
    try:
        current = client.get_log_metric(metric_name=name, timeout=TIMEOUT_S)
    except gexc.NotFound:
        client.create_log_metric(parent=f"projects/{clients.project}", metric=wanted, timeout=TIMEOUT_S)
        return StepResult("created", name)
    if current.filter == wanted.filter and dict(current.label_extractors) == dict(wanted.label_extractors):
        return StepResult("unchanged", name)
    client.update_log_metric(metric_name=name, metric=wanted, timeout=TIMEOUT_S)
    return StepResult("updated", name)


def ensure_dashboard(
    clients: CloudClients, uploads_topic: str, dead_letter_subscription: str, endpoint_name: str
) -> StepResult:
    """Create the dashboard, or replace the one with its display name. The trigger's subscription
    and the endpoint's id are looked up now: both exist only once deployed."""
    from deploy.gcp.pubsub_calls import trigger_subscriptions

    monitoring = MonitoringClients.of(clients)
    uploads = [s.rsplit("/", 1)[-1] for s in trigger_subscriptions(clients, uploads_topic)]
    endpoints = clients.vertex.Endpoint.list(filter=f'display_name="{endpoint_name}"')
    endpoint_id = endpoints[0].name if endpoints else ""
    wanted = _message(monitoring.dashboard_type, dashboard(uploads, dead_letter_subscription, endpoint_id))
    parent = f"projects/{clients.project}"
    for current in monitoring.dashboards.list_dashboards(parent=parent, timeout=TIMEOUT_S):
        if current.display_name == DASHBOARD_NAME:
            wanted.name, wanted.etag = current.name, current.etag
            if monitoring.dashboard_type.to_dict(current) == monitoring.dashboard_type.to_dict(wanted):
                return StepResult("unchanged", current.name)
            monitoring.dashboards.update_dashboard(request={"dashboard": wanted}, timeout=TIMEOUT_S)
            return StepResult("updated", current.name)
    created = monitoring.dashboards.create_dashboard(
        request={"parent": parent, "dashboard": wanted}, timeout=TIMEOUT_S
    )
    return StepResult("created", created.name)


def ensure_alert_policies(
    clients: CloudClients, uploads_topic: str, dead_letter_subscription: str
) -> StepResult:
    """Create the alert policies, or update the ones with their display names."""
    from deploy.gcp.pubsub_calls import trigger_subscriptions

    monitoring = MonitoringClients.of(clients)
    uploads = [s.rsplit("/", 1)[-1] for s in trigger_subscriptions(clients, uploads_topic)]
    parent = f"projects/{clients.project}"
    existing = {
        p.display_name: p for p in monitoring.alerts.list_alert_policies(name=parent, timeout=TIMEOUT_S)
    }
    outcomes = []
    for policy in alert_policies(uploads, dead_letter_subscription):
        wanted = _message(monitoring.policy_type, policy)
        current = existing.get(wanted.display_name)
        if current is None:
            monitoring.alerts.create_alert_policy(name=parent, alert_policy=wanted, timeout=TIMEOUT_S)
            outcomes.append("created")
        elif [c.condition_threshold for c in current.conditions] != [
            c.condition_threshold for c in wanted.conditions
        ]:
            wanted.name = current.name
            monitoring.alerts.update_alert_policy(alert_policy=wanted, timeout=TIMEOUT_S)
            outcomes.append("updated")
        else:
            outcomes.append("unchanged")
    outcome: Outcome = "unchanged"
    if "created" in outcomes or "updated" in outcomes:
        outcome = "created" if "created" in outcomes else "updated"
    return StepResult(outcome, f"{len(outcomes)} alert policies")


def delete_monitoring(clients: CloudClients) -> StepResult:
    """Delete the dashboard, the alert policies and the log metric deploy made (found by name)."""
    from google.api_core import exceptions as gexc

    monitoring = MonitoringClients.of(clients)
    parent = f"projects/{clients.project}"
    deleted = 0
    for board in monitoring.dashboards.list_dashboards(parent=parent, timeout=TIMEOUT_S):
        if board.display_name == DASHBOARD_NAME:
            monitoring.dashboards.delete_dashboard(name=board.name, timeout=TIMEOUT_S)
            deleted += 1
    for policy in monitoring.alerts.list_alert_policies(name=parent, timeout=TIMEOUT_S):
        if policy.display_name.startswith(ALERT_PREFIX):
            monitoring.alerts.delete_alert_policy(name=policy.name, timeout=TIMEOUT_S)
            deleted += 1
    try:
        monitoring.logging.delete_log_metric(
            metric_name=f"{parent}/metrics/{IMAGES_METRIC}", timeout=TIMEOUT_S
        )
        deleted += 1
    except gexc.NotFound:
        pass
    return StepResult("deleted" if deleted else "absent", f"{deleted} monitoring resources")


@dataclass
class MonitoringClients:
    """The Cloud Monitoring and Logging clients (fakes in tests) and the proto types they take."""

    dashboards: Any
    alerts: Any
    logging: Any
    metrics: Any
    dashboard_type: Any
    policy_type: Any

    @classmethod
    def of(cls, clients: Any) -> MonitoringClients:
        """``clients.monitoring`` when given (tests), else built from Application Default Credentials
        once per ``clients``."""
        given = getattr(clients, "monitoring", None)
        if given is not None:
            return given  # type: ignore[no-any-return]
        from google.cloud import monitoring_dashboard_v1, monitoring_v3
        from google.cloud.logging_v2.services.metrics_service_v2 import MetricsServiceV2Client

        built = cls(
            dashboards=monitoring_dashboard_v1.DashboardsServiceClient(),
            alerts=monitoring_v3.AlertPolicyServiceClient(),
            logging=MetricsServiceV2Client(),
            metrics=monitoring_v3.MetricServiceClient(),
            dashboard_type=monitoring_dashboard_v1.Dashboard,
            policy_type=monitoring_v3.AlertPolicy,
        )
        clients.monitoring = built
        return built


class MonitoringReader:
    """What ``samdrop status --project`` reads: latest points of Pub/Sub and Vertex metrics, sums of
    the per-image log metric, running pipeline jobs."""

    def __init__(self, project: str, region: str, *, clients: Any = None) -> None:
        from deploy.gcp.clients import CloudClients

        self.project = project
        self.region = region
        self.clients = clients if clients is not None else CloudClients(project, region)

    def trigger_subscriptions(self, topic: str) -> list[str]:
        from deploy.gcp.pubsub_calls import trigger_subscriptions

        return [s.rsplit("/", 1)[-1] for s in trigger_subscriptions(self.clients, topic)]

    def _series(self, query: str, seconds: int, aggregation: dict[str, Any] | None = None) -> list[Any]:
        now = time.time()
        request: dict[str, Any] = {
            "name": f"projects/{self.project}",
            "filter": query,
            "interval": {"end_time": {"seconds": int(now)}, "start_time": {"seconds": int(now - seconds)}},
            "view": "FULL",
        }
        if aggregation:
            request["aggregation"] = aggregation
        metrics = MonitoringClients.of(self.clients).metrics
        return list(metrics.list_time_series(request=request, timeout=TIMEOUT_S))

    def latest(self, metric: str, subscription: str) -> float | None:
        """The newest point of a Pub/Sub subscription metric over the last five minutes."""
        series = self._series(_subscription_metric(metric, [subscription]), 300)
        points = [s.points[0] for s in series if s.points]
        return float(_value(points[0].value)) if points else None

    def image_outcomes(self, seconds: int) -> dict[tuple[str, str], float]:
        """Images finished over the last ``seconds``, by (outcome, error code)."""
        aggregation = {
            "alignment_period": {"seconds": seconds},
            "per_series_aligner": "ALIGN_SUM",
            "cross_series_reducer": "REDUCE_SUM",
            "group_by_fields": ["metric.label.outcome", "metric.label.error_code"],
        }
        counts: dict[tuple[str, str], float] = {}
        for series in self._series(_images(), seconds, aggregation):
            labels = series.metric.labels
            key = (labels.get("outcome", ""), labels.get("error_code", ""))
            counts[key] = counts.get(key, 0.0) + sum(float(_value(p.value)) for p in series.points)
        return counts

    def endpoint_replicas(self) -> int | None:
        series = self._series(
            f'{ENDPOINT} AND metric.type="aiplatform.googleapis.com/prediction/online/replicas"', 600
        )
        points = [s.points[0] for s in series if s.points]
        return int(sum(float(_value(p.value)) for p in points)) if points else None

    def running_pipelines(self) -> int | None:
        jobs = self.clients.vertex.PipelineJob.list(
            filter='state="PIPELINE_STATE_RUNNING"', project=self.project, location=self.region
        )
        return len(list(jobs))


def _message(message_type: Any, document: dict[str, Any]) -> Any:
    """A proto-plus message from its REST JSON (camelCase, as the API documents it)."""
    return message_type.from_json(json.dumps(document))


def _value(value: Any) -> float:
    """A monitoring ``TypedValue``'s number, whichever field holds it."""
    for name in ("double_value", "int64_value"):
        number = getattr(value, name, None)
        if number:
            return float(number)
    return 0.0


def deploy_monitoring_steps(settings: Settings, function_name: str, endpoint_name: str) -> list[Step]:
    """The last steps of ``samdrop deploy``: they watch what the earlier ones made."""
    s = settings
    return [
        Step(
            f"Count the function's per-image log lines: log-based metric {IMAGES_METRIC} "
            "(labels outcome, error_code)",
            ApiCall(ensure_images_metric, {"function_name": function_name}),
            key="monitoring-images-metric",
        ),
        Step(
            f"Dashboard {DASHBOARD_NAME!r}: backlog age, dead letters, images/min, error codes, endpoint "
            "latency and replicas, GPU utilisation",
            ApiCall(
                ensure_dashboard,
                {
                    "uploads_topic": s.uploads_topic,
                    "dead_letter_subscription": s.dead_letter_subscription,
                    "endpoint_name": endpoint_name,
                },
            ),
            key="monitoring-dashboard",
        ),
        Step(
            f"Alert policies: dead letters > 0, oldest upload older than {OLDEST_UPLOAD_ALERT_S} s, "
            f"over {FAILURE_RATIO_ALERT:.0%} of images failed in {ALERT_WINDOW_S // 60} minutes",
            ApiCall(
                ensure_alert_policies,
                {"uploads_topic": s.uploads_topic, "dead_letter_subscription": s.dead_letter_subscription},
            ),
            key="monitoring-alerts",
        ),
    ]


def destroy_monitoring_steps() -> list[Step]:
    """The first step of ``samdrop destroy``: what :func:`deploy_monitoring_steps` made."""
    return [
        Step(
            f"Delete the dashboard {DASHBOARD_NAME!r}, the {ALERT_PREFIX.strip()} alert policies and the "
            f"log-based metric {IMAGES_METRIC}",
            ApiCall(delete_monitoring, {}),
            key="delete-monitoring",
        )
    ]
