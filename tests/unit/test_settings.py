from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from samdrop.errors import ConfigError
from samdrop.settings import Settings


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.model_type == "auto"
    assert settings.output_bucket == settings.bucket + "-results"  # as deploy makes it
    assert settings.incoming_prefix == "incoming/"


def test_values_are_parsed_from_the_mapping():
    settings = Settings.from_env(
        {
            "SAMDROP_BATCH_SIZE": "8",
            "SAMDROP_FAST_PATH": "false",
            "SAMDROP_RESULTS_PREFIX": "/out",
            "SAMDROP_CACHE_DIR": "/tmp/x",
            "SAMDROP_RESULTS_BUCKET": "other-bucket",
        }
    )
    assert settings.batch_size == 8
    assert settings.fast_path is False
    assert settings.results_prefix == "out/"
    assert settings.cache_dir == Path("/tmp/x")
    assert settings.output_bucket == "other-bucket"


def test_results_may_share_the_upload_bucket_and_a_long_bucket_needs_its_own():
    same = Settings.from_env({"SAMDROP_BUCKET": "b-uploads", "SAMDROP_RESULTS_BUCKET": "b-uploads"})
    assert same.output_bucket == same.bucket
    with pytest.raises(ConfigError, match=r"default results bucket .* SAMDROP_RESULTS_BUCKET"):
        Settings.from_env({"SAMDROP_BUCKET": "b" * 60})
    assert (
        Settings.from_env({"SAMDROP_BUCKET": "b" * 60, "SAMDROP_RESULTS_BUCKET": "res"}).output_bucket
        == "res"
    )


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(ValidationError, match="frozen"):
        settings.bucket = "x"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SAMDROP_BATCH_SIZE": "many"}, "SAMDROP_BATCH_SIZE"),
        ({"SAMDROP_BATCH_SIZE": "0"}, "SAMDROP_BATCH_SIZE"),
        ({"SAMDROP_MODEL_TYPE": "vit_x"}, "SAMDROP_MODEL_TYPE"),
        ({"SAMDROP_MODEL_TYPE": "classic", "SAMDROP_CHECKPOINT": "x.pth"}, "SAMDROP_CHECKPOINT"),
        ({"SAMDROP_WEIGHTS_URL": "ftp://mirror/"}, "SAMDROP_WEIGHTS_URL"),
        ({"SAMDROP_BUCKET": "Bad_Bucket!"}, "SAMDROP_BUCKET"),
        ({"SAMDROP_DEVICE": "tpu"}, "SAMDROP_DEVICE"),
        ({"SAMDROP_FAST_PATH": "maybe"}, "SAMDROP_FAST_PATH"),
        ({"SAMDROP_ENDPOINT": "ftp://x"}, "SAMDROP_ENDPOINT"),
        ({"SAMDROP_MAX_DELIVERY_ATTEMPTS": "2"}, "SAMDROP_MAX_DELIVERY_ATTEMPTS"),
        ({"SAMDROP_PRECISION": "fp16"}, "SAMDROP_PRECISION"),
        ({"SAMDROP_COMPILE": "sometimes"}, "SAMDROP_COMPILE"),
        ({"SAMDROP_AMG_POINTS_PER_SIDE": "0"}, "SAMDROP_AMG_POINTS_PER_SIDE"),
        ({"SAMDROP_AMG_POINTS_PER_SIDE": "200"}, "SAMDROP_AMG_POINTS_PER_SIDE"),
        ({"SAMDROP_AMG_POINTS_PER_SIDE": "big"}, "SAMDROP_AMG_POINTS_PER_SIDE"),
    ],
)
def test_invalid_values_name_the_variable_to_fix(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_to_env_round_trips():
    settings = Settings.from_env({"SAMDROP_BATCH_SIZE": "3", "SAMDROP_FAST_PATH": "false"})
    assert Settings.from_env(settings.to_env()) == settings


def test_describe_lists_every_variable():
    names = [name for name, _, _ in Settings.describe()]
    assert all(name.startswith("SAMDROP_") for name in names)
    assert len(names) == len(set(names))


def test_grid_precision_and_compile_default_to_auto():
    settings = Settings.from_env({})
    assert (settings.precision, settings.compile, settings.amg_points_per_side) == ("auto", "auto", None)
    assert Settings.from_env({"SAMDROP_AMG_POINTS_PER_SIDE": "auto"}).amg_points_per_side is None
    assert Settings.from_env({"SAMDROP_AMG_POINTS_PER_SIDE": "24"}).amg_points_per_side == 24


def test_classic_accepts_checkpoint_auto_and_nothing_else():
    assert (
        Settings.from_env({"SAMDROP_MODEL_TYPE": "classic", "SAMDROP_CHECKPOINT": "auto"}).checkpoint
        == "auto"
    )
    with pytest.raises(ConfigError, match="SAMDROP_CHECKPOINT"):
        Settings.from_env({"SAMDROP_MODEL_TYPE": "classic", "SAMDROP_CHECKPOINT": "/m/sam_vit_b.pth"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SAMDROP_BATCH_SIZE": "abc"}, "SAMDROP_BATCH_SIZE='abc' should be a valid integer"),
        ({"SAMDROP_BATCH_SIZE": "0"}, "SAMDROP_BATCH_SIZE='0' should be greater than 0"),
        ({"SAMDROP_ENDPOINT_TIMEOUT_S": "-1"}, "SAMDROP_ENDPOINT_TIMEOUT_S='-1' should be greater than 0"),
        ({"SAMDROP_REQUEST_TIMEOUT_S": "soon"}, "SAMDROP_REQUEST_TIMEOUT_S='soon' should be a valid number"),
        ({"SAMDROP_GCS_PORT": "70000"}, "SAMDROP_GCS_PORT='70000' should be less than 65536"),
        ({"SAMDROP_DEVICE": "tpu"}, "SAMDROP_DEVICE='tpu' should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_form_expected(env, expected):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.message.startswith(f"invalid settings: {expected}")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SAMDROP_BATCH_SIZE": "abc", "SAMDROP_MAX_MASKS": "0"})
    assert "SAMDROP_BATCH_SIZE" in caught.value.message and "SAMDROP_MAX_MASKS" in caught.value.message


def test_settings_never_read_the_process_environment(monkeypatch):
    monkeypatch.setenv("SAMDROP_BATCH_SIZE", "77")
    assert Settings().batch_size == Settings.from_env({}).batch_size == 4
    assert Settings.from_env(os.environ).batch_size == 77


def test_the_command_reports_a_bad_setting_in_one_line():
    """``samdrop settings`` as the console script runs it (``deploy.command:main``), in a fresh process."""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-m", "deploy.command", "settings"],
        env={**os.environ, "SAMDROP_BATCH_SIZE": "abc", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "SAMDROP_BATCH_SIZE='abc'" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
