from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from predictor.batcher import RequestBatcher


class Model:
    """Stands in for SamRoutine.predict: fills results in place, slowly, one run at a time."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.runs: list[list[str]] = []
        self.busy = threading.Lock()

    def __call__(self, items: list[dict]) -> None:
        assert self.busy.acquire(blocking=False), "two runs at once"
        try:
            time.sleep(self.seconds)
            if any(item["name"] == "poison" for item in items):
                raise RuntimeError("the model failed")
            self.runs.append([item["name"] for item in items])
            for item in items:
                item["result"] = item["name"].upper()
        finally:
            self.busy.release()


def submit_all(batcher: RequestBatcher, names: list[str]) -> list[tuple[dict, int | BaseException]]:
    requests = [{"name": name} for name in names]

    def one(request: dict) -> int | BaseException:
        try:
            return batcher.submit([request])
        except RuntimeError as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(one, requests))
    return list(zip(requests, outcomes, strict=True))


def test_a_burst_runs_in_groups_up_to_the_batch_size():
    model = Model()
    batcher = RequestBatcher(model, max_images=4, window_s=0.02)
    outcomes = submit_all(batcher, [f"img{i}" for i in range(12)])
    assert all(request["result"] == request["name"].upper() for request, _ in outcomes)
    sizes = [len(run) for run in model.runs]
    assert sum(sizes) == 12
    assert max(sizes) == 4 and all(size <= 4 for size in sizes)
    assert len(model.runs) <= 6  # not one run per request
    groups = [group for _, group in outcomes if isinstance(group, int)]
    assert sorted(groups) == sorted(
        size for size in sizes for _ in range(size)
    )  # each request learns how many ran with it


def test_a_lone_request_waits_at_most_the_window():
    model = Model(seconds=0.0)
    batcher = RequestBatcher(model, max_images=4, window_s=0.05)
    started = time.monotonic()
    assert batcher.submit([{"name": "a"}]) == 1
    assert time.monotonic() - started < 1.0
    assert model.runs == [["a"]]


def test_a_failing_request_does_not_fail_its_neighbours():
    model = Model()
    batcher = RequestBatcher(model, max_images=8, window_s=0.05)
    outcomes = submit_all(batcher, ["a", "b", "poison", "c"])
    for request, outcome in outcomes:
        if request["name"] == "poison":
            assert isinstance(outcome, RuntimeError) and "result" not in request
        else:
            assert request["result"] == request["name"].upper()
            assert outcome == 1  # rerun alone after the grouped run failed


def test_requests_without_images_skip_the_model():
    model = Model()
    batcher = RequestBatcher(model, max_images=4, window_s=0.0, count=lambda items: 0)
    assert batcher.submit([{"name": "a"}]) == 1
    assert model.runs == []


@pytest.mark.parametrize("window_s", [0.0, 0.01])
def test_everything_queued_while_busy_joins_the_next_run(window_s):
    model = Model(seconds=0.2)
    batcher = RequestBatcher(model, max_images=16, window_s=window_s)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.submit, [{"name": "first"}])
        time.sleep(0.05)  # the model is busy with "first" now
        rest = [pool.submit(batcher.submit, [{"name": f"r{i}"}]) for i in range(5)]
        assert first.result() == 1
        assert [future.result() for future in rest] == [5] * 5
    assert [len(run) for run in model.runs] == [1, 5]
