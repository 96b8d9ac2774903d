"""A Dagster executor that runs a run's independent steps concurrently on threads of one process.

Dagster offers steps in one process, one at a time (``in_process_executor``), or concurrently in a process each
(``multiprocess_executor``), where each step pays a fresh interpreter, the imports and the definitions (~1.5-2 s here,
longer than most of this platform's steps) and DuckDB's one-writer-per-file rule would make the steps of a run wait
for each other's file anyway. This is the third way Dagster's tracker asks for (dagster-io/dagster#4041): the
in-process executor's loop, with each step's event sequence run on a thread of its own, at most ``max_concurrent`` at
a time (default: the CPUs), so that DuckDB, polars and LightGBM, which release the GIL, keep both cores busy. The
work it overlaps: the tables of a month (raw, validated), the feature tables, and each model's chain (training set,
challenger, evaluation, drift report, batch scores) beside the other model's. Work that uses every core by itself
(a feature build of many months, a LightGBM training) still waits its turn (``core/cores.py``), and a finished step
gives the memory it freed back to the system (glibc keeps it in the thread's arena otherwise). When more steps are
ready than threads are free, the one that starts the longest chain of steps goes first (``longest_chain_first``).

What stays as in Dagster's own executors:

* **Events**: each step stores its events from its thread (as a multiprocess step does from its process); the
  run's loop handles them in order per step, triggers hooks and skips downstream steps of a failure.
* **Pools**: a step in a pool claims a slot before it starts. Steps of one run share the slot their run claimed
  first and hold it until the run's steps end: the ``duckdb`` pool (limit 1) still keeps other runs' steps off the
  warehouse while this run's steps write it concurrently from one process, which DuckDB allows (one database
  instance per process, one connection per thread: ``Warehouse.get_connection``). When the run's loop itself fails,
  its running steps still end before the slot is freed. A run whose ready steps wait for another run's slot sleeps
  until it may claim again, where Dagster's loop would spin (``_RunHoldsPools.interval_to_next_pending_claim_check``).
* **Interrupts**: a termination request (SIGTERM or SIGINT, a run cancelled from the UI) starts no new step; steps
  already running finish (a Python thread cannot be stopped from outside), then the run ends interrupted, as the
  multiprocess executor waits for its children.
* **Retries** and ``step_dependency_config``: as the in-process executor's config. Each attempt of a step has a
  thread of its own.

One thing it adds: a run of partitioned assets that names no partition is refused before any step, saying how to
name one (:func:`refuse_a_run_without_partition`); Dagster failed each such step with an error of its own first.

It extends Dagster's executor from its private modules (as ``sqlite_storage.py`` does its storage); the pin
``dagster<1.14`` (pyproject.toml) holds them, and ``mlops_assets_tests/test_threaded_executor.py`` runs it.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import dagster as dg
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import _trigger_hook, dagster_event_sequence_for_step
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.execution.step_dependency_config import (
    StepDependencyConfig,
    get_step_dependency_config_field,
)
from dagster._core.executor.base import Executor
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
    PRIORITY_TAG,
)
from dagster._utils.error import serializable_error_info_from_exc_info
from dagster._utils.timing import time_execution_scope
from dagster_shared.utils.timing import format_duration

logger = logging.getLogger(__name__)

#: Seconds the run's loop waits for a step's next event before it looks for interrupts again.
_POLL_S = 0.1
#: Seconds the run's loop sleeps at most while its ready steps wait for a pool slot (interrupts are looked for after).
_MAX_CLAIM_WAIT_S = 1.0
#: Seconds it sleeps at least while a step waits for a slot: a back-off that has run out is tried again next (so
#: ~50 ms late), and one whose step is no longer tried (abandoned while it waited) stays run out for ever, which
#: must not make the loop spin.
_MIN_CLAIM_WAIT_S = 0.05


class _RunHoldsPools(InstanceConcurrencyContext):
    """Pool slots claimed once per run: the first step of a pool claims its slot as usual; the run's later steps in
    that pool use the same slot, which is freed when the run's steps end, not after each step."""

    def __init__(self, instance: dg.DagsterInstance, dagster_run: dg.DagsterRun) -> None:
        super().__init__(instance, dagster_run)
        self._held: dict[str, str] = {}  # pool -> the step key its slot was claimed under

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        if concurrency_key in self._held:
            # a step that waited for the slot while another run held it no longer waits (or the run never ends)
            self._pending_claims.discard(step_key)
            self._pending_timeouts.pop(step_key, None)
            self._pending_claim_counts.pop(step_key, None)
            return True
        claimed = super().claim(concurrency_key, step_key, step_priority)
        if claimed:
            self._held[concurrency_key] = step_key
        return claimed

    def free_step(self, step_key: str) -> None:
        """Held for the run: freed at exit."""

    def interval_to_next_pending_claim_check(self) -> float:
        """Seconds until a step waiting for a slot may claim again (after Dagster's back-off: 1 s, growing to 15 s),
        at most :data:`_MAX_CLAIM_WAIT_S`, so that a termination request is seen while the run waits, and at least
        :data:`_MIN_CLAIM_WAIT_S`. Dagster's own returns ``min(0, ...)``, never more than 0: its loop never slept, and
        a run waiting for another run's slot kept a core busy (measured: ~10 CPU-s of a test's run while it waited;
        dagster-io/dagster#20367, closed unmerged, saw the same)."""
        if not self._pending_claims:
            return 0.0
        now = time.time()
        earliest = min((ready_at - now for ready_at in self._pending_timeouts.values()), default=0.0)
        return min(_MAX_CLAIM_WAIT_S, max(_MIN_CLAIM_WAIT_S, earliest))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for step_key in self._held.values():
            super().free_step(step_key)
        self._held.clear()
        super().__exit__(exc_type, exc_value, traceback)


_DONE = object()  # a step thread's last item


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim(0)``: give the memory a finished step freed back to the system. glibc keeps what a
    thread freed in that thread's arena for its next allocations; with steps on threads, the 10x training pipeline
    peaked at 2.58 GiB (one step at a time: 2.28 GiB). A no-op elsewhere than glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


_TRIM = _malloc_trim()


def _steps(running: dict[int, tuple[Any, list[DagsterEvent]]]) -> list[str]:
    """The keys of the steps running."""
    return sorted({context.step.key for context, _ in running.values()})


def _run_step(step_context: Any, key: int, out: queue.Queue[tuple[int, Any]]) -> None:
    """One attempt of a step: its events into ``out`` under ``key``, then ``_DONE`` (or the exception that broke
    Dagster's own step machinery: user code's errors are failure events already)."""
    try:
        for event in dagster_event_sequence_for_step(step_context):
            out.put((key, event))
        _TRIM()
        out.put((key, _DONE))
    except BaseException as error:  # noqa: BLE001 - handed to the run's thread, which raises it
        out.put((key, error))


def _until_ended(
    running: dict[int, tuple[Any, list[DagsterEvent]]], events: queue.Queue[tuple[int, Any]]
) -> Iterator[DagsterEvent]:
    """The events of the steps still running after the run's loop failed, until each has ended (done or broken):
    the run's pool slots are freed after that, never while one of its steps may still write (the one-writer rule).
    A step whose machinery breaks meanwhile gets an engine event with its error, stored as it is made (a caller that
    no longer iterates does not lose it): the run raises the first error only."""
    while running:
        attempt, item = events.get()
        if item is _DONE:
            del running[attempt]
        elif isinstance(item, BaseException):
            step_context, _ = running.pop(attempt)
            report = _reported(f"the error of step {step_context.step.key}", _broken_step_event, step_context, item)
            if report is not None:
                yield report
        else:
            yield item


def _broken_step_event(step_context: Any, error: BaseException) -> DagsterEvent:
    return DagsterEvent.engine_event(
        step_context,
        f"Step {step_context.step.key} broke while the run's loop was failing: {error!r}",
        EngineEventData(error=serializable_error_info_from_exc_info((type(error), error, error.__traceback__))),
    )


def _loop_failed_event(
    job_context: PlanExecutionContext, running: dict[int, tuple[Any, list[DagsterEvent]]], exc_info: Any
) -> DagsterEvent:
    return DagsterEvent.engine_event(
        job_context,
        f"The run's loop failed while {_steps(running)} were running: they finish before the run frees its pool "
        "slots, so that no other run's step writes beside them",
        EngineEventData(error=serializable_error_info_from_exc_info(exc_info)),
    )


def _reported(what: str, make: Callable[..., DagsterEvent], *args: Any) -> DagsterEvent | None:
    """The engine event ``make(*args)`` makes (and stores), or None when that fails too (the event log may be what
    broke the run): the failure goes to this module's log, and the wait for the run's running steps goes on, since
    their pool slots must outlive them."""
    try:
        return make(*args)
    except Exception:
        logger.exception("could not record %s in the run's event log", what)
        return None


def longest_chain_first(execution_plan: ExecutionPlan) -> Callable[[ExecutionStep], float]:
    """The order in which ready steps start: a step's ``dagster/priority`` tag first, as in Dagster's executors, then
    the longest chain of steps that still waits on it. With fewer threads than ready steps, the step that starts the
    run's longest chain (a model's training set, before that model's online store) starts first, rather than the one
    listed first; steps that tie keep Dagster's order."""
    downstream: dict[str, list[str]] = {key: [] for key in execution_plan.step_keys_to_execute}
    for key, upstream in execution_plan.get_executable_step_deps().items():
        for dependency in upstream:
            downstream.setdefault(dependency, []).append(key)
    chain: dict[str, int] = {}
    for step in reversed(execution_plan.get_steps_to_execute_in_topo_order()):
        chain[step.key] = 1 + max((chain.get(key, 0) for key in downstream.get(step.key, ())), default=0)

    def sort_key(step: ExecutionStep) -> float:
        return -(int(step.tags.get(PRIORITY_TAG, 0)) * 1_000_000 + chain.get(step.key, 0))

    return sort_key


def threaded_plan_iterator(
    job_context: PlanExecutionContext, execution_plan: ExecutionPlan, max_concurrent: int
) -> Iterator[DagsterEvent]:
    """Dagster's in-process plan loop (``inner_plan_execution_iterator``), each step on a thread of its own."""
    compute_log_manager = job_context.instance.compute_log_manager
    step_keys = [step.key for step in execution_plan.get_steps_to_execute_in_topo_order()]
    with ExitStack() as stack:
        pools = stack.enter_context(_RunHoldsPools(job_context.instance, job_context.dagster_run))
        active = stack.enter_context(
            execution_plan.start(
                retry_mode=job_context.retry_mode,
                sort_key_fn=longest_chain_first(execution_plan),
                max_concurrent=max_concurrent,
                instance_concurrency_context=pools,
                step_dependency_config=job_context.step_dependency_config,
            )
        )
        # the process's output is captured once for the whole run, as the in-process executor does
        log_key = compute_log_manager.build_log_key_for_run(job_context.run_id, create_compute_log_file_key())
        log_context = stack.enter_context(compute_log_manager.capture_logs(log_key))
        yield DagsterEvent.capture_logs(job_context, step_keys, log_key, log_context)

        events: queue.Queue[tuple[int, Any]] = queue.Queue()
        # attempt -> (its step's context, its events so far). By attempt, not step key: a step up for retry may start
        # again before its previous attempt's thread has said it is done
        running: dict[int, tuple[Any, list[DagsterEvent]]] = {}
        attempts = itertools.count()
        interrupted = False
        try:
            while running or not (interrupted or active.is_complete):
                if not interrupted and active.check_for_interrupts():
                    interrupted = True
                    active.mark_interrupted()
                    yield DagsterEvent.engine_event(
                        job_context,
                        f"Termination requested: no new step starts; waiting for {_steps(running)} to finish",
                        EngineEventData.interrupted(_steps(running)),
                    )
                if not interrupted:
                    for step in active.get_steps_to_execute(limit=max_concurrent - len(running)):
                        step_context = job_context.for_step(step, active.get_known_state())
                        attempt = next(attempts)
                        thread = threading.Thread(
                            target=_run_step, args=(step_context, attempt, events), name=f"step {step.key}", daemon=True
                        )
                        thread.start()
                        # counted once started: a thread that failed to start would be waited for for ever. Its
                        # events wait in the queue, which only this loop reads, until the line below has run
                        running[attempt] = (step_context, [])
                    yield from active.concurrency_event_iterator(job_context)
                if not running:  # settle skipped and abandoned steps, then wait for a pool slot or a retry
                    yield from active.plan_events_iterator(job_context)
                    if not interrupted:
                        active.sleep_til_ready()
                    continue
                try:
                    attempt, item = events.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                step_context, step_events = running[attempt]
                if isinstance(item, BaseException):
                    del running[attempt]  # its thread has ended
                    raise item
                if item is _DONE:
                    del running[attempt]
                    key = step_context.step.key
                    if key not in _steps(running):  # else it was up for retry, and its next attempt runs
                        active.verify_complete(job_context, key)
                    for event in active.plan_events_iterator(job_context):  # skips and abandons downstream
                        step_events.append(event)
                        yield event
                    yield from _trigger_hook(step_context, step_events)
                    continue
                step_events.append(item)
                yield item
                active.handle_event(item)
        except GeneratorExit:  # the caller stopped iterating: nothing more may be yielded
            for _ in _until_ended(running, events):  # still, the run's pool slots outlive its steps
                pass
            raise
        except BaseException:
            try:
                if running:
                    failed = _reported(
                        "the failure of the run's loop", _loop_failed_event, job_context, running, sys.exc_info()
                    )
                    if failed is not None:
                        yield failed
                    yield from _until_ended(running, events)
            except GeneratorExit:  # the caller stopped iterating meanwhile: wait without yielding
                for _ in _until_ended(running, events):
                    pass
                raise
            raise
        if interrupted:
            raise DagsterExecutionInterruptedError()


class ThreadedExecutor(Executor):
    """Runs a run's steps in its process, independent steps concurrently on threads (see the module docstring)."""

    def __init__(
        self,
        retries: RetryMode,
        max_concurrent: int,
        step_dependency_config: StepDependencyConfig | None = None,
    ) -> None:
        self._retries = retries
        self._max_concurrent = max_concurrent
        self._step_dependency_config = step_dependency_config or StepDependencyConfig.default()

    @property
    def retries(self) -> RetryMode:
        return self._retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self._step_dependency_config

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        step_keys = execution_plan.step_keys_to_execute
        refuse_a_run_without_partition(plan_context, step_keys)
        pid = os.getpid()
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in process (pid: {pid}) on up to {self._max_concurrent} threads",
            event_specific_data=EngineEventData.in_process(pid, step_keys),
        )
        max_concurrent = self._max_concurrent

        def iterator(job_context: PlanExecutionContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
            return threaded_plan_iterator(job_context, execution_plan, max_concurrent)

        with time_execution_scope() as timer:
            yield from iter(
                ExecuteRunWithPlanIterable(
                    execution_plan=plan_context.execution_plan,
                    iterator=iterator,
                    execution_context_manager=PlanExecutionContextManager(
                        job=plan_context.job,
                        retry_mode=plan_context.retry_mode,
                        execution_plan=plan_context.execution_plan,
                        run_config=plan_context.run_config,
                        dagster_run=plan_context.dagster_run,
                        instance=plan_context.instance,
                        raise_on_error=plan_context.raise_on_error,
                        output_capture=plan_context.output_capture,
                        step_dependency_config=self.step_dependency_config,
                    ),
                )
            )
        yield DagsterEvent.engine_event(
            plan_context,
            f"Finished steps in process (pid: {pid}) in {format_duration(timer.millis)}",
            event_specific_data=EngineEventData.in_process(pid, step_keys),
        )


def partitioned_assets_without_partition(
    job: dg.JobDefinition, tags: Mapping[str, str], step_keys: Sequence[str]
) -> list[str]:
    """The partitioned assets among the steps to run, when the run names no partition (empty when it names one).

    Dagster fails each of their steps before its code starts, with "Cannot access partition_key for a non-partitioned
    run" (a job launched from the UI's Launchpad with its partition left empty, or ``dagster job execute`` without
    partition tags): the step's own explanation never gets a chance."""
    if PARTITION_NAME_TAG in tags or (
        ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags
    ):
        return []
    partitioned = []
    for step_key in step_keys:
        for key in job.asset_layer.get_selected_entity_keys_for_node(NodeHandle(step_key, parent=None)):
            if isinstance(key, dg.AssetKey) and job.asset_layer.get(key).partitions_def is not None:
                partitioned.append(key.to_user_string())
    return sorted(set(partitioned))


def refuse_a_run_without_partition(plan_context: PlanOrchestrationContext, step_keys: Sequence[str]) -> None:
    """Fail the run before any step starts, saying how to name its partitions, when it needs them and has none."""
    job = plan_context.job.get_definition()
    missing = partitioned_assets_without_partition(job, plan_context.dagster_run.tags, step_keys)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise dg.Failure(
            description=f"{plan_context.dagster_run.job_name} names no partition, and its partitioned assets "
            f"({shown}) need one: "
            "in the UI, pick the months in the Launchpad's partition selector (or materialize the assets from the "
            "asset graph, which asks for them); from a shell, `make train` runs it over every landed month "
            '(by hand: --tags "$(mlops months --tags)").'
        )


@dg.executor(
    name="threaded",
    config_schema={
        "max_concurrent": dg.Field(
            dg.Noneable(int),
            default_value=None,
            description="Steps running at once (default: the CPUs this process may use). 1 runs them one by one.",
        ),
        "retries": get_retries_config(),
        "step_dependency_config": get_step_dependency_config_field(),
    },
)
def threaded_executor(init_context: dg.InitExecutorContext) -> ThreadedExecutor:
    """Steps in the run's process; independent steps concurrently, on threads (``max_concurrent``, default the CPUs)."""
    config: dict[str, Any] = dict(init_context.executor_config)
    return ThreadedExecutor(
        retries=RetryMode.from_config(config["retries"]),
        max_concurrent=config["max_concurrent"] or len(os.sched_getaffinity(0)),
        step_dependency_config=StepDependencyConfig.from_config(config.get("step_dependency_config")),
    )


def execute_with_job_executor(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    run_config: dict[str, Any] | None = None,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    raise_on_error: bool = False,
) -> dg.ExecuteInProcessResult:
    """``job.execute_in_process``, but on the job's own executor (Dagster's replaces it with a serial one): a run
    here executes as the daemon's run worker executes it. The job's executor must run in this process (the threaded
    or in-process executor: the multiprocess executor needs a job it can rebuild in its children)."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.execute_in_process import core_execute_in_process, merge_run_tags

    selection = list(asset_selection or [])
    run_config = dict(run_config or {})
    selected = job.get_subset(asset_selection=frozenset(selection)) if selection else job
    if partition_key and selected.partitions_def:
        with partition_loading_context(dynamic_partitions_store=instance) as context:
            selected.validate_partition_key(partition_key, selected_asset_keys=set(selection), context=context)
    if not run_config and selected.partitioned_config and partition_key:
        run_config = dict(selected.partitioned_config.get_run_config_for_partition_key(partition_key))
    return core_execute_in_process(
        job=InMemoryJob(job_def=selected),
        run_config=run_config,
        instance=instance,
        output_capturing_enabled=True,
        raise_on_error=raise_on_error,
        run_tags=merge_run_tags(
            job_def=job,
            partition_key=partition_key,
            tags=tags,
            asset_selection=selection,
            instance=instance,
            run_config=run_config,
        ),
        asset_selection=frozenset(selection),
    )
