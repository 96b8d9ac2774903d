"""A run launched on a code server that is shutting down (a restart) is refused as "away", so the run queue keeps it.

A real code location server (``dagster code-server start``) is told to shut down (Dagster's ``ShutdownServer``, what
its restart does first); a run launched on it then is refused. Dagster's own launcher raised that as a launch
failure, and the queued run coordinator failed the run for good (a deployment hunt lost a queued run so, its sensor's
run key never asking again); the platform's (``mlops_assets/run_launcher.py``) raises it as an unreachable code
server, which the coordinator puts back on the queue (``max_user_code_failure_retries``, in both instance files).
The launch here goes through the instance's launcher directly (Dagster's default coordinator, no daemon), so the
refusal reaches the test as the queue's coordinator would see it. The run in progress is held at its first DuckDB
step by the test holding the `duckdb` pool's slot, so the server is still shutting down when the second launch comes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import grpc
import pytest
import yaml
from dagster._grpc.client import DagsterGrpcClient

from mlops_assets.core.processes import process_identity
from mlops_assets.healthcheck import code_server_status
from mlops_assets.run_launcher import RestartAwareRunLauncher
from mlops_assets_tests.conftest import started_run
from mlops_assets_tests.deploy.conftest import free_port

LOCATION = "mlops_assets"
BIN = Path(sys.executable).parent


def _serving(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if code_server_status("127.0.0.1", port) == "SERVING":
                return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the code server on port {port} never served")


def test_a_run_launched_on_a_code_server_shutting_down_goes_back_to_the_queue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "MLOPS_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}

    def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)

    assert cli(BIN / "mlops", "replay", "--through", "2013-01", "--every", "50").returncode == 0
    tags = cli(BIN / "mlops", "months", "--tags").stdout.strip()
    home = data / "dagster_home"  # as `mlops home` writes it (each `mlops` command writes it again)
    settings = yaml.safe_load((home / "dagster.yaml").read_text())
    assert settings["run_launcher"] == {"module": "mlops_assets.run_launcher", "class": "RestartAwareRunLauncher"}
    # the launch made here by the launcher itself: Dagster's default coordinator, no queue, no daemon
    settings["run_coordinator"] = {"module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))

    port = free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: {LOCATION}\n"
    )
    # Dagster's code server itself (`dagster code-server start` runs one behind a proxy that exits at once when told
    # to shut down, so a launch then finds it away, which Dagster already requeues)
    server = subprocess.Popen(
        [BIN / "dagster", "api", "grpc", "-m", "mlops_assets.definitions", "-h", "127.0.0.1", "-p", str(port)]
        + ["--location-name", LOCATION],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    launch = (BIN / "dagster", "job", "launch", "-w", workspace, "-j", "feature_pipeline", "--tags", tags)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, RestartAwareRunLauncher)
        # a run of this test's own process (alive: recovery leaves it alone) holds the duckdb slot: a run
        # launched meanwhile waits at its first DuckDB step, in progress for as long as the test needs
        holder = started_run(instance, process_identity())
        try:
            _serving(port, time.monotonic() + 120)
            # a run in progress on the server (waiting for the slot), which a server told to shut down waits for
            running = cli(*launch)
            assert running.returncode == 0, running.stdout + running.stderr
            DagsterGrpcClient(port=port, host="127.0.0.1").shutdown_server()  # what a restart does first
            refused = cli(*launch)
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0, said
            # refused as a code server away (the queue's coordinator requeues that), naming why, not as a failed
            # launch
            assert "DagsterUserCodeUnreachableError" in said and "the code server is shutting down" in said, said
            assert "after telling it to shut down" in said
            instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
            instance.report_run_canceled(holder, "the test's slot holder")
            # the run in progress finishes on the server shutting down, which then exits
            assert server.wait(timeout=120) == 0
        finally:
            instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=60)
        records = sorted(instance.get_run_records(), key=lambda record: record.create_timestamp)
        first, second = (record.dagster_run for record in records if record.dagster_run.run_id != holder.run_id)
        assert first.status == dg.DagsterRunStatus.SUCCESS, first
        assert second.status != dg.DagsterRunStatus.SUCCESS  # refused: never started
