"""Dagster's default run launcher, for which a code server that is shutting down counts as away, not as broken.

A code server told to stop (a restart, a new image rolled out, ``compose down``) keeps serving until its last run
worker exits, and refuses to start any other run meanwhile: ``StartRun`` answers "Tried to start a run on a server
after telling it to shut down". Dagster's ``DefaultRunLauncher`` raises that as a launch failure, and the queued run
coordinator fails the run for good: only an unreachable code server (``DagsterUserCodeUnreachableError``) sends a run
back to the queue (``max_user_code_failure_retries`` in the instance files). With one run at a time, the next queued
run is launched within a second of the previous run's end, while that run's worker is still exiting: a deployment hunt
restarted the code server under a run and lost the run queued behind it (its sensor's run key never asks again).

:class:`RestartAwareRunLauncher` raises that refusal as ``DagsterUserCodeUnreachableError``, so the run goes back on
the queue and is launched on the new code server. The instance files name it as the ``run_launcher``; it extends
Dagster's, held by the pin ``dagster<1.14`` (pyproject.toml).
"""

from __future__ import annotations

from dagster._core.errors import DagsterLaunchFailedError, DagsterUserCodeUnreachableError
from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext

#: What a code server that was told to shut down answers ``StartRun`` with (``dagster._grpc.server`` and
#: ``dagster._grpc.proxy_server``).
SHUTTING_DOWN = "after telling it to shut down"


class RestartAwareRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher``, whose launch on a code server that is shutting down is a code server away (the run is
    queued again) rather than a failed run."""

    def launch_run(self, context: LaunchRunContext) -> None:
        try:
            super().launch_run(context)
        except DagsterLaunchFailedError as error:
            if SHUTTING_DOWN not in str(error):
                raise
            raise DagsterUserCodeUnreachableError(
                f"the code server is shutting down (restarting?) and refused run {context.dagster_run.run_id}: {error}"
            ) from error
