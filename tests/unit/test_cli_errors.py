"""Every error path of the ``samdrop`` command, through the console script, from a folder outside
the checkout, with no local stack and no credentials (the local stack's paths:
tests/integration/test_cli_any_folder.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.target import gcloud_project, user_state_dir
from samdrop.commandline import ExitStatus
from tests.samdrop_command import run, user_env, write_console_script


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(console script, environment, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("cli-user")
    (root / "work").mkdir()
    return write_console_script(root), user_env(root / "home"), root / "work"


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_local_status_without_a_stack_names_the_state_dir_and_the_way_out(user):
    script, env, cwd = user
    result = run(script, "local", "status", env=env, cwd=cwd)
    assert result.returncode == ExitStatus.FAILED
    assert f"{env['XDG_STATE_HOME']}/samdrop/stack.json" in result.stdout
    assert "samdrop local up" in result.stdout


@pytest.mark.parametrize(
    "args", [("watch", "--count", "1"), ("results", "get", "incoming/a.jpg"), ("batch", "status", "b1")]
)
def test_no_stack_and_no_credentials_is_one_line_naming_both_ways_out(user, args):
    script, env, cwd = user
    result = run(script, *args, env=env, cwd=cwd)
    assert result.returncode == ExitStatus.FAILED, result.stderr
    line = one_line(result.stderr)
    assert "samdrop local up" in line and "gcloud auth application-default login" in line
    assert result.stdout == ""


@pytest.mark.parametrize("args", [("settings",), ("--help",), ("local", "env")])
def test_a_reader_that_goes_away_ends_the_command_quietly(user, args):
    script, env, cwd = user
    # The read end is closed before the command writes: every write meets a broken pipe.
    proc = subprocess.Popen(
        [str(script), *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == ExitStatus.BROKEN_PIPE
    assert err == b""


def test_a_bad_setting_is_one_line_naming_the_variable(user):
    script, env, cwd = user
    result = run(script, "settings", env={**env, "SAMDROP_BATCH_SIZE": "abc"}, cwd=cwd)
    assert result.returncode == ExitStatus.USAGE
    assert "SAMDROP_BATCH_SIZE" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("watch", "--count", "-3"), "argument --count: -3 is out of range: must be >= 1"),
        (("watch", "--timeout", "0"), "argument --timeout: 0 is out of range"),
        (("batch", "start", "x", "--id", "a", "--shard-size", "-5"), "--shard-size: -5 is out of range"),
        (("upload", "a.jpg", "--threads", "0"), "--threads: 0 is out of range: must be 1..64"),
        (("batch", "status", "b1", "--interval", "soon"), "'soon' is not a number"),
        (("batch", "status"), "the following arguments are required: ID"),
        (("batch", "drop", "--id", "a"), "invalid choice: 'drop'"),  # the old form: `batch start` now
        (("upload", "a.jpg", "--download", "out"), "--download needs --wait"),
        (("upload", "missing.jpg"), "missing.jpg does not exist"),
    ],
)
def test_usage_errors_exit_2_before_anything_runs(user, args, says):
    script, env, cwd = user
    result = run(script, *args, env=env, cwd=cwd)
    assert result.returncode == ExitStatus.USAGE, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_status_without_an_id_suggests_the_right_command(user):
    script, env, cwd = user
    result = run(script, "batch", "status", env=env, cwd=cwd)
    assert "usage: samdrop batch status" in result.stderr and " ID" in result.stderr


def test_the_state_dir_is_the_users_whatever_the_folder(tmp_path):
    home = tmp_path / "home"
    assert user_state_dir({}, home=home) == home / ".local" / "state" / "samdrop"
    assert user_state_dir({"XDG_STATE_HOME": "/x/state"}, home=home) == Path("/x/state/samdrop")
    # A relative XDG_STATE_HOME is invalid (XDG Base Directory): ignored.
    assert user_state_dir({"XDG_STATE_HOME": "rel"}, home=home) == home / ".local" / "state" / "samdrop"
    assert user_state_dir({"SAMDROP_STATE_DIR": "/y", "XDG_STATE_HOME": "/x"}) == Path("/y")
    assert user_state_dir({"SAMDROP_STATE_DIR": "here"}).is_absolute()


def test_the_project_falls_back_to_gcloud_as_gcloud_does(tmp_path):
    config = tmp_path / "gcloud"
    (config / "configurations").mkdir(parents=True)
    env = {"CLOUDSDK_CONFIG": str(config)}
    assert gcloud_project(env) is None  # nothing configured
    (config / "configurations" / "config_default").write_text("[core]\nproject = from-default\n")
    assert gcloud_project(env) == "from-default"
    (config / "configurations" / "config_work").write_text("[core]\naccount = me@x\nproject = from-work\n")
    (config / "active_config").write_text("work\n")
    assert gcloud_project(env) == "from-work"
    assert gcloud_project({**env, "CLOUDSDK_ACTIVE_CONFIG_NAME": "default"}) == "from-default"
    assert gcloud_project({**env, "CLOUDSDK_CORE_PROJECT": "from-property"}) == "from-property"
    both = {**env, "GOOGLE_CLOUD_PROJECT": "from-adc", "CLOUDSDK_CORE_PROJECT": "p"}
    assert gcloud_project(both) == "from-adc"
    (config / "configurations" / "config_work").write_text("not an ini file")
    assert gcloud_project(env) is None
