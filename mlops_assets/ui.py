"""``mlops ui``: ``dagster dev`` (webserver, daemon, code server) under a supervisor that one SIGTERM or Ctrl-C stops
whole, however it was started.

Why: a shell starts a background job with SIGINT ignored, Python then installs no KeyboardInterrupt handler, and
``dagster dev`` copies SIGINT's handler onto SIGTERM, so ``dagster dev &`` from a script ignores SIGTERM (and SIGKILL
leaves its daemon running and launching runs). The supervisor starts ``dagster dev`` in a session of its own with
SIGINT's default handler restored, forwards SIGTERM / SIGINT / SIGHUP to it as SIGINT (its graceful shutdown: the
webserver and the daemon get their shutdown message, runs in progress are left to run monitoring), and after a grace
period kills whatever of that session is still alive, so no child outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: How long ``dagster dev`` gets to stop its webserver, daemon and code servers before they are killed.
GRACE_SECONDS = 30.0


def _restore_sigint() -> None:
    """In the child, before exec: SIGINT's default handler, whatever the parent shell set."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def session_members(session: int) -> list[int]:
    """Pids of the live processes of ``session`` (the supervised ``dagster dev`` and all it started)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            members.append(int(entry.name))
    return members


def supervise(
    command: Sequence[str],
    grace_seconds: float = GRACE_SECONDS,
    say: Callable[[str], None] = print,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run ``command`` (``dagster dev ...``, in ``cwd`` with ``env``) until it exits or this process gets SIGTERM /
    SIGINT / SIGHUP; then stop it and everything it started. Returns its exit code (0 after a requested stop)."""
    # preexec_fn is safe here: the CLI starts no thread before this
    child = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        preexec_fn=_restore_sigint,  # noqa: PLW1509
        start_new_session=True,
    )
    stopping: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        if not stopping:
            say(
                f"mlops ui: {signal.Signals(signum).name} received, stopping dagster dev (webserver, daemon, code server)"
            )
        stopping.append(signum)
        try:
            os.kill(child.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, request_stop)
    while child.poll() is None and not stopping:
        time.sleep(0.2)
    started = time.monotonic()
    deadline = started + grace_seconds
    # the grace period is for everything dagster dev started (the session id is its pid: start_new_session), not
    # only for dagster dev itself: its code server may still be closing when it has exited
    while stopping and time.monotonic() < deadline and (child.poll() is None or session_members(child.pid)):
        time.sleep(0.2)
    leftovers = session_members(child.pid)
    if leftovers:
        waited = time.monotonic() - started
        after = f"{waited:.0f} s after the stop request" if stopping else "after dagster dev exited"
        say(f"mlops ui: {len(leftovers)} process(es) still running {after}: killed")
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    code = child.wait()
    return 0 if stopping else code


def dagster_dev_command(workspace: Path, port: int | None, host: str | None) -> list[str]:
    """``dagster dev`` on the workspace, from this interpreter's environment."""
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(workspace)]
    if port is not None:
        command += ["-p", str(port)]
    if host is not None:
        command += ["-h", host]
    return command
