"""State file and process-group handling, with tiny real subprocesses."""

import json
import sys
import time

import pytest

from deploy import processes
from deploy.processes import LocalStackError, ProcessRecord, StackState

# A parent that starts a child in its own group and sleeps: `stop` must reach both.
PARENT_AND_CHILD = (
    "import subprocess, sys, time;"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    "print('ready', flush=True); time.sleep(60)"
)


def _record(**changes) -> ProcessRecord:
    values = dict(
        name="gcs", pid=1, pgid=1, port=4443, argv=["x"], log="/tmp/l", health_url="http://h/", started_at=1.0
    )
    return ProcessRecord(**{**values, **changes})


def test_state_file_round_trips(tmp_path):
    state = StackState(processes=[_record(start_ticks=7)], client_env={"A": "b"})
    path = tmp_path / "dir" / "stack.json"
    processes.save_state(path, state)
    assert processes.load_state(path) == state
    assert json.loads(path.read_text())["version"] == processes.STATE_VERSION


def test_missing_state_is_none_and_a_foreign_version_is_an_error(tmp_path):
    assert processes.load_state(tmp_path / "absent.json") is None
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({"version": 99, "processes": []}))
    with pytest.raises(LocalStackError, match="version"):
        processes.load_state(path)


def test_stop_ends_the_whole_group(tmp_path):
    log = tmp_path / "sleeper.log"
    proc, record = processes.start(
        "sleeper", [sys.executable, "-c", PARENT_AND_CHILD], env={}, log=log, port=0, health_url="http://x/"
    )
    deadline = time.monotonic() + 10
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert len(processes.live_members(record.pgid)) == 2
    assert processes.is_running(record)
    assert processes.stop([record], grace_s=5) == []
    assert processes.live_members(record.pgid) == []
    assert not processes.is_running(record)
    assert proc.poll() is not None


def test_a_reused_pid_is_not_ours(tmp_path):
    _proc, record = processes.start(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], env={}, log=tmp_path / "l", port=0,
        health_url="http://x/",
    )  # fmt: skip
    try:
        impostor = ProcessRecord(**{**record.__dict__, "start_ticks": (record.start_ticks or 0) + 1})
        assert processes.is_running(record)
        assert not processes.is_running(impostor)
    finally:
        processes.stop([record])


def test_wait_ready_points_to_the_log_when_the_server_dies(tmp_path):
    log = tmp_path / "broken.log"
    proc, record = processes.start(
        "broken", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"], env={}, log=log, port=1,
        health_url="http://127.0.0.1:1/",
    )  # fmt: skip
    with pytest.raises(LocalStackError, match=rf"broken exited with status 3.*{log}(.|\n)*bad flag"):
        processes.wait_ready(proc, record, timeout_s=10)


def test_wait_ready_times_out_with_the_log(tmp_path):
    log = tmp_path / "slow.log"
    proc, record = processes.start(
        "slow", [sys.executable, "-c", "import time; time.sleep(30)"], env={}, log=log, port=1,
        health_url="http://127.0.0.1:1/",
    )  # fmt: skip
    try:
        with pytest.raises(
            LocalStackError, match=rf"slow did not answer http://127.0.0.1:1/ within 0.5s; see {log}"
        ):
            processes.wait_ready(proc, record, timeout_s=0.5)
    finally:
        processes.stop([record])


def test_start_reports_a_missing_program(tmp_path):
    with pytest.raises(LocalStackError, match="cannot start gcs"):
        processes.start("gcs", ["/no/such/binary"], env={}, log=tmp_path / "l", port=0, health_url="")
