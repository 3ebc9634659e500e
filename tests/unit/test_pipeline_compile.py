"""The compiled pipeline: the committed template is what the code compiles to, and its shape."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.compile import TEMPLATE, compile_pipeline


def test_committed_template_matches_a_fresh_compile(tmp_path: Path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    assert fresh.read_text() == TEMPLATE.read_text(), (
        "pipeline/samdrop_pipeline.yaml is stale: regenerate it with `python -m pipeline.compile`"
    )


def test_template_shape_parameters_parallelism_and_resources(tmp_path: Path):
    spec = yaml.safe_load(
        compile_pipeline(tmp_path / "p.yaml", image="example.com/sam:1", parallelism=7).read_text()
    )
    assert spec["pipelineInfo"]["name"] == "samdrop-batch"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "batch_id", "bucket", "marker_generation", "config",
        "accelerator_type", "accelerator_count", "cpu_limit", "memory_limit",
    }  # fmt: skip
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"example.com/sam:1"}
    shard = next(e["container"] for name, e in executors.items() if "segment-shard" in name)
    assert shard["resources"]["accelerator"]["resourceType"].endswith("pipelinechannel--accelerator_type']}}")
    assert "pipelinechannel--cpu_limit" in shard["resources"]["resourceCpuLimit"]
    loop = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["for-loop-2"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 7
    assert (
        spec["root"]["dag"]["tasks"]["publish"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    )
    # No task installs anything at run time: the image already holds the project and KFP.
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors.values())
