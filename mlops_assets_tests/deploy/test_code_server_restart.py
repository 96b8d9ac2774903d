"""A run launched on a code server that is shutting down (a restart) is refused as "away", so the run queue keeps it.

A real code location server (``dagster code-server start``) is told to shut down (Dagster's ``ShutdownServer``, what
its restart does first); a run launched on it then is refused. Dagster's own launcher raised that as a launch
failure, and the queued run coordinator failed the run for good (a deployment hunt lost a queued run so, its sensor's
run key never asking again); the platform's (``mlops_assets/run_launcher.py``) raises it as an unreachable code
server, which the coordinator puts back on the queue (``max_user_code_failure_retries``, in both instance files).
The launch here goes through the instance's launcher directly (Dagster's default coordinator, no daemon), so the
refusal reaches the test as the queue's coordinator would see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from mlops_assets.healthcheck import code_server_status
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
    import dagster as dg
    from dagster._grpc.client import DagsterGrpcClient

    from mlops_assets.run_launcher import RestartAwareRunLauncher

    data = tmp_path / "data"
    env = {**os.environ, "MLOPS_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}

    def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)

    assert cli(BIN / "mlops", "replay", "--through", "2013-03", "--every", "50").returncode == 0
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
    try:
        _serving(port, time.monotonic() + 120)
        # a run in progress (launched: its worker started by the server), which a code server told to shut down
        # waits for
        running = cli(BIN / "dagster", "job", "launch", "-w", workspace, "-j", "training_pipeline", "--tags", tags)
        assert running.returncode == 0, running.stdout + running.stderr
        DagsterGrpcClient(port=port, host="127.0.0.1").shutdown_server()  # what a restart does first
        refused = cli(BIN / "dagster", "job", "launch", "-w", workspace, "-j", "feature_pipeline", "--tags", tags)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        # refused as a code server away (the queue's coordinator requeues that), naming why, not as a failed launch
        assert "DagsterUserCodeUnreachableError" in said and "the code server is shutting down" in said, said[-3000:]
        assert "after telling it to shut down" in said
        # the run in progress finishes on the server shutting down, which then exits
        assert server.wait(timeout=120) == 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, RestartAwareRunLauncher)
        first, refused_run = sorted(instance.get_runs(), key=lambda run: run.job_name, reverse=True)
        assert (first.job_name, first.status) == ("training_pipeline", dg.DagsterRunStatus.SUCCESS)
        assert refused_run.job_name == "feature_pipeline"
