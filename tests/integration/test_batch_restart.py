"""A batch across `local down` + `local up`: the restore gives every object a new generation, and
`samdrop batch run` still resumes the claimed batch without recomputing an image (issue #21)."""

from __future__ import annotations

import json

import pytest

from .test_pipeline_local import AMG, RECORDS, RUN_TIMEOUT_S, Stack, _image, _samdrop
from .test_pipeline_local import pipeline_stack as pipeline_stack  # this module's own stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_batch_run_after_a_restart_resumes_every_image_from_the_restored_records(pipeline_stack):
    stack: Stack = pipeline_stack
    batch = "across-a-restart"
    for seed in range(3):
        data, ext, ctype = _image(seed)
        stack.put(f"batches/{batch}/img_{seed}.{ext}", data, ctype)
    marker = stack.put(f"batches/{batch}/_READY", json.dumps({"amg": AMG}).encode(), "application/json")
    message = stack.completions.first(stack.batch(batch), timeout_s=RUN_TIMEOUT_S)
    folder = f"results/batches/{batch}/"
    records = {n: b.download_as_bytes() for n, b in stack.names(folder).items() if n.endswith(RECORDS)}
    assert len(records) == 3

    stack.stack.down()
    stack.stack.up()

    restored_marker = stack.bucket.get_blob(f"batches/{batch}/_READY")
    assert int(restored_marker.generation) != marker  # what the claim's body and the plan still name
    rerun = _samdrop(stack, "batch", "run", batch)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["status"] == message["status"]
    assert stack.json(folder + "summary.json")["resumed"] == 3  # found done, not recomputed
    after = {n: b.download_as_bytes() for n, b in stack.names(folder).items() if n.endswith(RECORDS)}
    assert after == records
    plan = stack.json(folder + "_plan/plan.json")
    assert plan["marker_generation"] == str(restored_marker.generation)  # planned again
