"""The threaded executor (``mlops_assets.threaded_executor``) on a real instance of the shipped storage: independent
steps run at once, a failure skips what depends on it and nothing else, a pool's slot is held once for the run and
freed at its end (after its running steps, even when the run's loop fails), ``max_concurrent: 1`` runs steps one by
one, of the ready steps the one that starts the longest chain starts first (a ``dagster/priority`` tag before that),
and a termination request lets running steps finish and starts no more.

Concurrency is proven by a barrier, not by timing: two steps that wait for each other at a ``threading.Barrier`` can
only both pass when they run at the same time; run one after the other, the first one's wait times out."""

from __future__ import annotations

import os
import signal
import threading
import time

import dagster as dg
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError

from mlops_assets.threaded_executor import _RunHoldsPools, execute_with_job_executor, threaded_executor
from mlops_assets_tests.conftest import instance_for_test, new_run

#: Seconds a step waits at the barrier for its sibling (long enough for a busy machine, short enough to fail fast).
MEET_S = 20.0


def _job(assets: list[dg.AssetsDefinition], config: dict | None = None) -> dg.JobDefinition:
    executor = threaded_executor.configured(config) if config else threaded_executor
    defs = dg.Definitions(assets=assets, jobs=[dg.define_asset_job("job", executor_def=executor)])
    return defs.resolve_job_def("job")


def _meeting_assets(barrier: threading.Barrier, pool: str | None = None) -> list[dg.AssetsDefinition]:
    @dg.asset(pool=pool)
    def left() -> None:
        barrier.wait(MEET_S)

    @dg.asset(pool=pool)
    def right() -> None:
        barrier.wait(MEET_S)

    @dg.asset(deps=[left, right])
    def joined() -> None:
        """Runs only after both."""

    return [left, right, joined]


def test_independent_steps_run_at_the_same_time() -> None:
    barrier = threading.Barrier(2)
    with instance_for_test() as instance:
        result = execute_with_job_executor(_job(_meeting_assets(barrier)), instance)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == {"left", "right", "joined"}
        # the dependent step started after both of its upstream steps ended
        stamps = {
            (entry.dagster_event.event_type, entry.dagster_event.step_key): entry.timestamp
            for entry in instance.all_logs(result.run_id)
            if entry.dagster_event is not None
        }
        start, success = dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS
        assert stamps[start, "joined"] >= max(stamps[success, "left"], stamps[success, "right"])


def test_max_concurrent_one_runs_steps_one_by_one() -> None:
    running, overlaps, lock = [0], [], threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1

    @dg.asset
    def first() -> None:
        work()

    @dg.asset
    def second() -> None:
        work()

    with instance_for_test() as instance:
        result = execute_with_job_executor(_job([first, second], {"max_concurrent": 1}), instance)
    assert result.success and overlaps == [1, 1]


def _order_of_steps(priority: str | None = None) -> list[str]:
    """The order in which one thread runs ``source``, then ``aa_leaf`` (no step after it; first in Dagster's order)
    and ``chain_start`` -> ``chain_middle`` -> ``chain_end``; ``priority``: ``aa_leaf``'s ``dagster/priority``."""
    ran: list[str] = []

    @dg.asset
    def source() -> None:
        ran.append("source")

    @dg.asset(deps=[source], op_tags={"dagster/priority": priority} if priority else None)
    def aa_leaf() -> None:
        ran.append("aa_leaf")

    @dg.asset(deps=[source])
    def chain_start() -> None:
        ran.append("chain_start")

    @dg.asset(deps=[chain_start])
    def chain_middle() -> None:
        ran.append("chain_middle")

    @dg.asset(deps=[chain_middle])
    def chain_end() -> None:
        ran.append("chain_end")

    assets = [source, aa_leaf, chain_start, chain_middle, chain_end]
    with instance_for_test() as instance:
        result = execute_with_job_executor(_job(assets, {"max_concurrent": 1}), instance)
    assert result.success
    return ran


def test_of_the_ready_steps_the_one_starting_the_longest_chain_starts_first() -> None:
    ran = _order_of_steps()
    assert sorted(ran) == ["aa_leaf", "chain_end", "chain_middle", "chain_start", "source"]
    assert ran[:3] == ["source", "chain_start", "chain_middle"]  # in Dagster's order alone, aa_leaf comes second


def test_a_priority_tag_comes_before_the_longest_chain() -> None:
    assert _order_of_steps(priority="1")[:2] == ["source", "aa_leaf"]


def test_a_failure_skips_its_downstream_and_not_its_siblings() -> None:
    @dg.asset
    def broken() -> None:
        raise ValueError("bad input")

    @dg.asset(deps=[broken])
    def after_broken() -> None:
        """Never runs."""

    @dg.asset
    def fine() -> None:
        time.sleep(0.3)  # still running when its sibling fails

    with instance_for_test() as instance:
        result = execute_with_job_executor(_job([broken, after_broken, fine]), instance)
        assert not result.success
        assert [e.asset_key.path[-1] for e in result.get_asset_materialization_events()] == ["fine"]
        failures = [e for e in result.all_events if e.is_step_failure]
        assert [e.step_key for e in failures] == ["broken"]
        assert "bad input" in str(failures[0].step_failure_data.error)
        assert {e.step_key for e in result.all_events if e.is_step_start} == {"broken", "fine"}
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_step_retried_by_its_policy_runs_again_and_the_run_succeeds() -> None:
    attempts = []

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the first attempt fails")

    @dg.asset(deps=[flaky])
    def after_flaky() -> None:
        """Runs once its upstream succeeded."""

    with instance_for_test() as instance:
        result = execute_with_job_executor(_job([flaky, after_flaky]), instance)
    assert result.success and len(attempts) == 2
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == {"flaky", "after_flaky"}


def test_a_pool_slot_is_claimed_once_for_the_run_and_freed_at_its_end() -> None:
    """Both steps are in a pool of one slot and still meet: the run holds the slot, its steps share it (another run's
    steps in the pool would wait)."""
    barrier = threading.Barrier(2)
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        result = execute_with_job_executor(_job(_meeting_assets(barrier, pool="warehouse")), instance)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        info = instance.event_log_storage.get_concurrency_info("warehouse")
        assert info.slot_count == 1 and info.active_slot_count == 0 and info.pending_step_count == 0


def test_steps_that_waited_for_another_runs_slot_all_start_once_it_is_free() -> None:
    """Another run holds the pool's only slot when this run starts: both steps wait; once it is freed, the first
    claims it for the run, the second shares it, and the run ends (a step left waiting would keep it running)."""
    barrier = threading.Barrier(2)
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("warehouse")
        assert storage.claim_concurrency_slot("warehouse", "another-run", "its-step").is_claimed
        job, results = _job(_meeting_assets(barrier, pool="warehouse")), []
        runner = threading.Thread(target=lambda: results.append(execute_with_job_executor(job, instance)))
        runner.start()
        time.sleep(1.0)
        assert not results and storage.get_concurrency_info("warehouse").pending_step_count == 2
        storage.free_concurrency_slots_for_run("another-run")
        runner.join(60)
        assert not runner.is_alive() and results[0].success
        assert storage.get_concurrency_info("warehouse").active_slot_count == 0


def test_a_run_whose_steps_wait_for_a_slot_sleeps_until_it_may_claim_again() -> None:
    """A step refused a slot (another run holds it) is tried again after Dagster's back-off; until then the run's loop
    sleeps, at most a second at a time. Dagster's own interval is never above 0: the loop spun, a core busy."""
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("warehouse")
        assert storage.claim_concurrency_slot("warehouse", "another-run", "its-step").is_claimed
        with _RunHoldsPools(instance, new_run(instance)) as pools:
            assert pools.interval_to_next_pending_claim_check() == 0.0  # nothing waits
            assert not pools.claim("warehouse", "first")
            assert 0.5 < pools.interval_to_next_pending_claim_check() <= 1.0  # Dagster's first back-off: 1 s
            assert not pools.claim("warehouse", "first")  # asked again before its time: refused without asking
            storage.free_concurrency_slots_for_run("another-run")
            deadline = time.monotonic() + 30
            while not pools.claim("warehouse", "first"):
                assert time.monotonic() < deadline
                time.sleep(pools.interval_to_next_pending_claim_check())
            assert pools.interval_to_next_pending_claim_check() == 0.0


class _Unprintable(DagsterExecutionInterruptedError):
    """An interrupt whose text cannot be made: no event can carry it."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_a_step_error_that_cannot_be_recorded_still_leaves_the_slot_held_until_the_steps_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The run's loop fails; then a second step breaks with an error no event can carry (its text cannot be made):
    the error goes to the executor's log, and the run still waits for its last running step before it frees the
    slot (the wait had ended at that error, and the slot was freed under the step)."""
    meeting, broke_too, seen_by_writer = threading.Barrier(3), threading.Event(), []

    broken = _breaks_the_loop(meeting)

    @dg.asset(pool="warehouse")
    def broken_unprintably(context) -> None:  # unannotated: Dagster reads no string annotation of a local function
        meeting.wait(MEET_S)
        _wait_for_the_loop_to_fail(context)
        broke_too.set()
        raise _Unprintable()

    @dg.asset(pool="warehouse")
    def still_writing(context) -> None:
        meeting.wait(MEET_S)
        _wait_for_the_loop_to_fail(context)
        assert broke_too.wait(MEET_S)
        time.sleep(0.5)  # the run's wait has met the unrecordable error by now
        seen_by_writer.append(context.instance.event_log_storage.get_concurrency_info("warehouse").active_slot_count)

    assets = [broken, broken_unprintably, still_writing]
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        result = execute_with_job_executor(_job(assets, {"max_concurrent": 3}), instance)
        assert not result.success
        assert seen_by_writer == [1]  # the run held the slot until its last step ended
        assert instance.event_log_storage.get_concurrency_info("warehouse").active_slot_count == 0
    assert "could not record the error of step broken_unprintably" in caplog.text


def test_a_step_no_longer_tried_after_its_back_off_leaves_the_loop_sleeping() -> None:
    """A step refused a slot and then no longer tried (abandoned while it waited) keeps a back-off that has run out
    for ever; the loop still sleeps between looks (at least 50 ms) instead of spinning."""
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("warehouse")
        assert storage.claim_concurrency_slot("warehouse", "another-run", "its-step").is_claimed
        with _RunHoldsPools(instance, new_run(instance)) as pools:
            assert not pools.claim("warehouse", "abandoned")
            time.sleep(1.1)  # Dagster's first back-off (1 s) runs out, and nobody asks for the step again
            assert pools.interval_to_next_pending_claim_check() >= 0.05


def test_a_termination_request_lets_running_steps_finish_and_starts_no_more() -> None:
    finished = threading.Event()

    @dg.asset
    def running_when_asked() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # what `dagster` does to a run worker asked to stop (SIGTERM alike)
        time.sleep(0.3)
        finished.set()

    @dg.asset(deps=[running_when_asked])
    def never_started() -> None:
        """Would run next."""

    with instance_for_test() as instance:
        result = execute_with_job_executor(_job([running_when_asked, never_started]), instance)
        assert finished.is_set() and not result.success
        steps_started = {e.step_key for e in result.all_events if e.is_step_start}
        assert steps_started == {"running_when_asked"}
        assert instance.get_run_by_id(result.run_id).status in (
            dg.DagsterRunStatus.CANCELED,
            dg.DagsterRunStatus.FAILURE,
        )


def _breaks_the_loop(meeting: threading.Barrier) -> dg.AssetsDefinition:
    """A step in the ``warehouse`` pool that meets its siblings, then breaks Dagster's own step machinery (an
    interrupt raised inside it, which Dagster re-raises): the run's loop fails while they still run."""

    @dg.asset(pool="warehouse")
    def broken() -> None:
        meeting.wait(MEET_S)
        raise DagsterExecutionInterruptedError("the step machinery broke")

    return broken


def _wait_for_the_loop_to_fail(context: dg.AssetExecutionContext) -> None:
    deadline = time.monotonic() + MEET_S
    while not any("loop failed" in (e.message or "") for e in context.instance.all_logs(context.run.run_id)):
        assert time.monotonic() < deadline, "the run's loop never failed"
        time.sleep(0.05)


def test_a_run_whose_loop_fails_frees_its_pool_slot_only_after_its_running_steps_end() -> None:
    """A step breaks Dagster's own step machinery (an interrupt raised inside it, which Dagster re-raises), so the
    run's loop fails while siblings in the same pool still run: they still hold the run's slot until they end
    (another run's step would otherwise write beside them), and the slot is freed after them. A sibling whose
    machinery breaks too meanwhile is reported with its error, not dropped."""
    sibling_started, seen_by_sibling = threading.Barrier(3), []

    broken = _breaks_the_loop(sibling_started)

    @dg.asset(pool="warehouse")
    def still_writing(context) -> None:  # unannotated: Dagster reads no string annotation of a local function
        sibling_started.wait(MEET_S)
        _wait_for_the_loop_to_fail(context)
        seen_by_sibling.append(context.instance.event_log_storage.get_concurrency_info("warehouse").active_slot_count)

    @dg.asset(pool="warehouse")
    def broken_later(context) -> None:
        sibling_started.wait(MEET_S)
        _wait_for_the_loop_to_fail(context)
        raise DagsterExecutionInterruptedError("a second step's machinery broke")

    config = {"max_concurrent": 3}
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        result = execute_with_job_executor(_job([broken, still_writing, broken_later], config), instance)
        assert not result.success
        said = [e.message or "" for e in result.all_events if e.is_engine_event]
        assert any("The run's loop failed while ['broken_later', 'still_writing'] were running" in m for m in said), (
            said
        )
        assert seen_by_sibling == [1]  # the run still held the slot while its step ran
        second = [e for e in instance.all_logs(result.run_id) if "broke while the run's loop" in (e.message or "")]
        assert [e.step_key for e in second] == ["broken_later"]
        assert "a second step's machinery broke" in str(second[0].dagster_event.engine_event_data.error)
        assert instance.event_log_storage.get_concurrency_info("warehouse").active_slot_count == 0


def _partitioned_job() -> dg.JobDefinition:
    months = dg.StaticPartitionsDefinition(["2013-01", "2013-02"])

    @dg.asset(partitions_def=months)
    def monthly() -> None:
        """One row per month."""

    @dg.asset(deps=[monthly])
    def summary() -> None:
        """Unpartitioned, downstream of every month."""

    defs = dg.Definitions(assets=[monthly, summary], jobs=[dg.define_asset_job("job", executor_def=threaded_executor)])
    return defs.resolve_job_def("job")


def test_a_run_of_partitioned_assets_without_a_partition_fails_before_any_step_saying_how_to_name_one() -> None:
    # Dagster itself fails each such step before its code starts ("Cannot access partition_key for a
    # non-partitioned run"): a job launched from the Launchpad with its partition left empty read that, and nothing else
    with instance_for_test() as instance:
        result = execute_with_job_executor(_partitioned_job(), instance)
        assert not result.success
        assert not [e for e in result.all_events if e.is_step_start]
        (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE]
        message = str(failure.event_specific_data.error.message)
        assert "job names no partition, and its partitioned assets (monthly) need one" in message
        assert "partition selector" in message and "mlops months --tags" in message


def test_a_partitioned_run_and_a_run_of_unpartitioned_assets_alone_are_not_refused() -> None:
    job = _partitioned_job()
    with instance_for_test() as instance:
        assert execute_with_job_executor(
            job, instance, partition_key="2013-02", asset_selection=[dg.AssetKey("monthly")]
        ).success
        ranged = {"dagster/asset_partition_range_start": "2013-01", "dagster/asset_partition_range_end": "2013-02"}
        assert execute_with_job_executor(job, instance, tags=ranged).success
        assert execute_with_job_executor(job, instance, asset_selection=[dg.AssetKey("summary")]).success
