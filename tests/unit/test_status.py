"""``samdrop status``'s arithmetic, and the bridge's tally of the topics, without servers."""

from __future__ import annotations

from deploy.status import predictor_figures, project_status
from deploy.tally import Tally
from predictor.metrics import PredictorMetrics
from samdrop.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_uploads_wait_from_their_publish_until_acked_or_dead_lettered_in_any_order():
    clock = Clock()
    tally = Tally(clock)
    tally.published("a", 990.0)
    tally.published("b", 995.0)
    tally.done("c")  # acked before the tally pulled its publish
    tally.published("c", 996.0)
    assert tally.snapshot()["uploads_waiting"] == 2
    assert tally.snapshot()["oldest_upload_age_s"] == 10.0
    tally.done("a")
    clock.now = 1005.0
    assert (tally.snapshot()["uploads_waiting"], tally.snapshot()["oldest_upload_age_s"]) == (1, 10.0)
    tally.done("b")
    assert (tally.snapshot()["uploads_waiting"], tally.snapshot()["oldest_upload_age_s"]) == (0, None)


def test_completions_are_counted_for_an_hour_by_status_and_code_with_a_five_minute_rate():
    clock = Clock()
    tally = Tally(clock)
    tally.completed({"kind": "image", "status": "failed", "error": {"code": "invalid_image", "message": ""}})
    clock.now += 3000
    for _ in range(10):
        tally.completed({"kind": "image", "status": "succeeded"})
    tally.completed({"kind": "batch", "status": "partial", "batch_id": "b"})
    snapshot = tally.snapshot()
    assert snapshot["completions_last_hour"] == {"failed": 1, "succeeded": 10, "partial": 1}
    assert snapshot["errors_last_hour"] == {"invalid_image": 1}
    assert snapshot["images_per_minute"] == 2.0  # ten images in the last five minutes
    clock.now += 700  # the failure is now more than an hour old
    snapshot = tally.snapshot()
    assert snapshot["completions_last_hour"] == {"succeeded": 10, "partial": 1}
    assert snapshot["errors_last_hour"] == {} and snapshot["images_per_minute"] == 0.0


def test_batch_fill_and_queue_depth_come_from_the_predictor_metrics():
    metrics = PredictorMetrics("tiny", "fp32", batch_size=4)
    assert predictor_figures(metrics.exposition().decode()) == (0.0, None)
    metrics.engine_run(4, [0.1])
    metrics.engine_run(2, [0.0, 0.2])
    metrics.watch_queue(lambda: 3)
    assert predictor_figures(metrics.exposition().decode()) == (3.0, 0.75)


class FakeReader:
    """What Cloud Monitoring and Vertex AI would answer for a deployment."""

    def trigger_subscriptions(self, topic: str) -> list[str]:
        assert topic == "samdrop-uploads"
        return ["eventarc-a", "eventarc-b"]

    def latest(self, metric: str, subscription: str) -> float | None:
        values = {
            ("num_undelivered_messages", "eventarc-a"): 7.0,
            ("num_undelivered_messages", "eventarc-b"): 1.0,
            ("oldest_unacked_message_age", "eventarc-a"): 42.0,
            ("oldest_unacked_message_age", "eventarc-b"): 3.0,
            ("num_undelivered_messages", "samdrop-dead-letter-sub"): 2.0,
        }
        return values.get((metric, subscription))

    def image_outcomes(self, seconds: int) -> dict[tuple[str, str], float]:
        if seconds == 3600:
            return {("succeeded", ""): 100.0, ("failed", "invalid_image"): 3.0, ("failed", "internal"): 1.0}
        return {("succeeded", ""): 50.0}

    def endpoint_replicas(self) -> int | None:
        return 2

    def running_pipelines(self) -> int | None:
        return 1


def test_a_project_status_sums_the_trigger_subscriptions_and_the_log_metric():
    status = project_status(Settings.from_env({}), "p", "europe-west4", clients=FakeReader())
    assert (status.uploads_waiting, status.oldest_upload_age_s, status.dead_letters) == (8, 42.0, 2)
    assert status.completions_last_hour == {"succeeded": 100, "failed": 4}
    assert status.errors_last_hour == {"invalid_image": 3, "internal": 1}
    assert status.images_per_minute == 10.0
    assert (status.endpoint_replicas, status.batches_running) == (2, 1)
    assert status.predictor_queue_depth is None
