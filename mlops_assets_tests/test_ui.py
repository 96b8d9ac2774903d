"""`mlops ui` (what `make ui` runs) started the way a script starts it, in the background with SIGINT ignored: one
SIGTERM stops `dagster dev`, its webserver, its daemon and its code server, leaving no process behind."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlops_assets.core.settings import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _descendants(pid: int) -> set[int]:
    pending, seen = [pid], set()
    while pending:
        for child in _children(pending.pop()):
            if child not in seen:
                seen.add(child)
                pending.append(child)
    return seen


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


#: What `dagster dev` starts, by a word of each process's command line: the webserver, the daemon, a code server.
ROLES = ("dagster_webserver", "dagster._daemon", "api grpc")


def _roles_started(pid: int) -> set[int] | None:
    """The descendants of ``pid`` once every one of :data:`ROLES` is among them (None before)."""
    started = _descendants(pid)
    lines = [_command_line(child) for child in started]
    return started if all(any(role in line for line in lines) for role in ROLES) else None


def test_one_sigterm_stops_everything_dagster_dev_started(tmp_path: Path) -> None:
    port = _free_port()
    mlops = Path(sys.executable).with_name("mlops")
    log = (tmp_path / "ui.log").open("w")
    # started as a non-interactive shell starts a background job (`mlops ui &` in a script): SIGINT ignored. By the
    # shell itself rather than a preexec_fn, which is unsafe in pytest-xdist's threaded worker.
    ui = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$0" "$@"', str(mlops), "ui", "--port", str(port)],
        cwd=REPO_ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert ui.poll() is None, (tmp_path / "ui.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Dagster UI did not come up: " + (tmp_path / "ui.log").read_text()
            time.sleep(1)
        # the daemon and a code server are started too (the webserver's code server may come first)
        while (started := _roles_started(ui.pid)) is None:
            assert time.monotonic() < deadline, f"not all of {ROLES} started: " + (tmp_path / "ui.log").read_text()
            time.sleep(0.2)

        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=90) == 0
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in started if _alive(pid)], (tmp_path / "ui.log").read_text()[-3000:]
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        log.close()
    assert "SIGTERM received, stopping dagster dev" in (tmp_path / "ui.log").read_text()
