"""One trace per image, in process: the function's spans, the traceparent it sends, the predictor's
stage spans under it, and the trace id in the completion message, masks.json and the log line."""

from __future__ import annotations

import json
import time
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from functions.events import UploadEvent
from functions.handler import handle_upload
from predictor.cpr import SamRoutine
from predictor.handler import record_spans
from samdrop import tracing
from samdrop.logs import configure as configure_logs
from samdrop.prompts import PROMPTS_METADATA_KEY
from samdrop.settings import Settings
from tests.unit.function_fakes import BUCKET, FakePublisher, FakeStore, jpeg, make_deps


class InProcessPredictor:
    """The endpoint call as the model server handles it, without HTTP: the traceparent header the
    function would send continues the trace in ``predictor.predict``."""

    def __init__(self, routine: SamRoutine) -> None:
        self.routine = routine
        self.headers: list[dict[str, str]] = []

    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        headers = tracing.outgoing_headers()
        self.headers.append(headers)
        context = tracing.incoming_context(headers)
        with tracing.tracer().start_as_current_span("predictor.predict", context=context) as span:
            slots = self.routine.preprocess({"instances": instances, "parameters": parameters})
            submitted = time.time_ns()
            self.routine.predict(slots)
            answer = self.routine.postprocess(slots)
            record_spans(span, slots, submitted)
        return answer["predictions"]


def test_one_trace_from_the_event_to_the_completion(fast_engine, cache_dir, capsys):
    store, publisher = FakeStore(), FakePublisher()
    name, generation = "incoming/cat.jpg", 1764065702512799
    store.put(BUCKET, name, jpeg())
    store.objects[(BUCKET, name)].generation = generation
    routine = SamRoutine()
    routine.setup(
        Settings.from_env({}, cache_dir=cache_dir),
        fast_engine,
        lambda uri, gen: store.read(BUCKET, uri.split("/", 3)[3], generation=gen),
    )
    endpoint = InProcessPredictor(routine)
    prompts = {PROMPTS_METADATA_KEY: json.dumps({"boxes": [[4, 4, 40, 30]]})}  # fast: no automatic masks
    event = UploadEvent("OBJECT_FINALIZE", BUCKET, name, str(generation), "image/jpeg", len(jpeg()), prompts)
    exporter = InMemorySpanExporter()
    configure_logs("INFO")  # as functions/main.py does: JSON lines on stdout

    with tracing.recording(exporter):
        outcome = handle_upload(event, make_deps(store, publisher, endpoint))  # type: ignore[arg-type]

    assert outcome == "succeeded"
    spans = sorted(exporter.get_finished_spans(), key=lambda s: (s.start_time or 0, -(s.end_time or 0)))
    trace_ids = {span.context.trace_id for span in spans}
    assert len(trace_ids) == 1
    trace_id = f"{trace_ids.pop():032x}"
    names = [span.name for span in spans]
    assert names[0] == "function.handle_upload" and spans[0].parent is None
    order = [
        "function.read",
        "function.endpoint",
        "predictor.predict",
        "predictor.read",
        "predictor.decode",
        "predictor.model",
        "predictor.encode",
        "predictor.decode_masks",
        "predictor.encode_outputs",
        "function.write_outputs",
        "function.publish_completion",
    ]
    assert [n for n in names if n in order] == order, names
    by_name = {span.name: span for span in spans}
    parent = by_name["predictor.predict"].parent
    assert parent is not None and parent.span_id == by_name["function.endpoint"].context.span_id
    assert endpoint.headers[0]["traceparent"].split("-")[1] == trace_id

    [body] = publisher.bodies
    assert body["trace_id"] == trace_id
    bucket, metadata = body["outputs"]["metadata"].removeprefix("gs://").split("/", 1)
    masks_json = json.loads(store.read(bucket, metadata))
    assert masks_json["trace_id"] == trace_id
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines and all(line["trace_id"] == trace_id for line in lines)


def test_traces_off_leave_no_trace_id_anywhere():
    assert tracing.current_trace_id() is None
    assert tracing.outgoing_headers() == {}
