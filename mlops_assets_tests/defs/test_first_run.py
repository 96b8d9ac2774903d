"""The first hour of a new user: a run's console says what each step did (not Dagster's DEBUG stream), a clean run
leaves no table "Unsynced", the UI names the landing sensor's target, descriptions survive Markdown, and the training
window keeps a retrain's data to the newest months."""

import re
from dataclasses import replace

import dagster as dg
import duckdb
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.cli import main
from mlops_assets.core.settings import TRAINING_WINDOW_ENV, Settings, load_settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.keys import features_key, keys_of, landing_key, raw_key, retraining_job_name
from mlops_assets.defs.progress import PROGRESS_CONSOLE_CONFIG, progress_console
from mlops_assets.defs.resources import build_resources
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.defs.sensors import LANDING_JOB
from mlops_assets.models.flight_delay import FLIGHT_DELAY
from mlops_assets_tests.conftest import instance_for_test


def test_the_progress_console_prints_step_messages_failures_and_the_run_not_the_debug_stream(
    capfd: pytest.CaptureFixture[str],
) -> None:
    @dg.asset(key=["stage", "built"])
    def built(context: dg.AssetExecutionContext) -> None:
        context.log.info("built 42 rows")
        context.log.debug("a detail nobody asked for")

    @dg.asset(key=["stage", "broken"], deps=[built])
    def broken() -> None:
        raise ValueError("the input is gone: land it again")

    @dg.asset(key=["stage", "after"], deps=[broken])
    def after() -> None: ...

    @dg.asset(key=["stage", "refused"], deps=[built])
    def refused() -> None:
        raise dg.Failure(description="only one month: land another")

    @dg.asset(key=["stage", "last"], deps=[after])
    def last() -> None: ...

    # checks run by steps of their own: their lines name the asset and the check, not the glued step key
    @dg.asset_check(asset=built, name="rows_match")
    def rows_match() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, description="41 rows, 42 expected")

    @dg.asset_check(asset=built, name="source_readable")
    def source_readable() -> dg.AssetCheckResult:
        raise OSError("the source file is gone")

    defs = dg.Definitions(
        assets=[built, broken, after, last, refused],
        asset_checks=[rows_match, source_readable],
        jobs=[dg.define_asset_job("demo")],
        loggers={"console": progress_console},
        executor=dg.in_process_executor,
    )
    with instance_for_test() as instance:
        result = defs.resolve_job_def("demo").execute_in_process(
            run_config=PROGRESS_CONSOLE_CONFIG, instance=instance, raise_on_error=False
        )
        events = [(e.dagster_event_type, e.step_key) for e in instance.all_logs(result.run_id) if e.dagster_event]
        stored = {str(kind.value) for kind, _ in events if kind is not None}
    printed = capfd.readouterr().err
    assert re.search(r"stage/built\s+built 42 rows", printed), printed
    # (mirrored through Dagster's `tail -F` of the captured output, this last line of a step was lost on a busy
    # machine: 6 runs in 30 beside three busy loops; written past the capture, 0 in 30: progress.terminal_stderr)
    assert re.search(r"stage/broken\s+FAILED: .*the input is gone: land it again", printed), f"{printed}\n{events}"
    assert "demo: run " in printed and "demo: FAILED in" in printed
    # a step's dg.Failure is its own explanation: printed without the exception's class
    assert re.search(r"stage/refused\s+FAILED: only one month: land another\n", printed), printed
    # the steps Dagster does not run say why in a few words
    assert re.search(r"stage/after\s+not run: stage/broken failed\n", printed), printed
    assert re.search(r"stage/last\s+not run: stage/after not run\n", printed), printed
    assert re.search(r"stage/built\s+check rows_match failed: 41 rows, 42 expected\n", printed), printed
    assert re.search(r"stage/built check source_readable\s+FAILED: .*the source file is gone", printed), printed
    for noise in (
        "built_rows_match",
        "built_source_readable",
        "STEP_START",
        "DEBUG",
        "a detail nobody asked for",
        "RESOURCE_INIT",
        "LOADED_INPUT",
        "Not executing",
    ):
        assert noise not in printed, printed
    # the console is quieter; the event log is not
    assert {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "ASSET_MATERIALIZATION"} <= stored


def _failed_step_error(raise_it: object) -> object:
    """The serialized error of a real step that raised what ``raise_it()`` raises, as the event log keeps it."""

    @dg.op
    def step() -> None:
        raise_it()  # type: ignore[operator]

    @dg.job
    def fails() -> None:
        step()

    executed = fails.execute_in_process(raise_on_error=False)
    [failure] = [e for e in executed.all_events if e.is_step_failure]
    return failure.step_failure_data.error


def test_a_failed_steps_line_is_its_own_words_or_the_innermost_error() -> None:
    """What the console prints for a failed step (and `mlops simulate` records): a dg.Failure's description, even
    raised from a library's error (the spec-terms message of a feature build that does not fit its SQL), else the
    innermost error, not Dagster's "Error occurred while executing op" wrapper."""
    from mlops_assets.defs.progress import root_cause
    from mlops_assets.simulation import _error_line

    def failure_from_polars() -> None:
        try:
            raise KeyError('unable to find column "is_delayed"')
        except KeyError as error:
            raise dg.Failure(description="feature table x does not fit its SQL: gives no column is_delayed") from error

    def plain_error() -> None:
        raise NotADirectoryError(20, "Not a directory", "/data/reports/flight_delay/evaluation/v0002")

    explained = _failed_step_error(failure_from_polars)
    assert root_cause(explained) == "feature table x does not fit its SQL: gives no column is_delayed"
    assert _error_line(explained) == root_cause(explained)
    innermost = _failed_step_error(plain_error)
    assert (
        root_cause(innermost)
        == "NotADirectoryError: [Errno 20] Not a directory: '/data/reports/flight_delay/evaluation/v0002'"
    )
    assert _error_line(innermost) == root_cause(innermost)


def test_a_replayed_month_run_leaves_the_reference_tables_in_sync_with_their_landed_files(settings: Settings) -> None:
    """`mlops replay` records what landed as the landing sources' data versions, so the raw step records the version
    it read: nothing shows "Unsynced" after a clean first run."""
    assert main(["replay", "--through", "2013-01", "--every", "50"]) == 0
    defs = build_definitions(CATALOG, settings)
    references = [t for t in CATALOG.tables if not t.monthly]
    with dg.DagsterInstance.get() as instance:
        job = defs.resolve_job_def("feature_pipeline")
        result = job.execute_in_process(
            instance=instance,
            tags=range_tags(["2013-01"]),
            asset_selection=[raw_key(t) for t in references],
        )
        assert result.success
        for table in references:
            landing = instance.fetch_observations(landing_key(table), limit=1).records[0].asset_observation
            raw = instance.fetch_materializations(raw_key(table), limit=1).records[0].asset_materialization
            assert landing is not None and raw is not None
            recorded = raw.tags[f"dagster/input_data_version/{landing_key(table).to_user_string()}"]
            assert recorded == landing.tags["dagster/data_version"] != "INITIAL", table.name


def test_a_promotion_leaves_the_months_scored_before_it_in_sync(settings: Settings) -> None:
    """A month is scored by the champion of the day it landed and never rescored (by design): with the champion as an
    upstream of the scores, every promotion showed the months scored before it as "Unsynced" in the UI."""
    graph = build_definitions(CATALOG, settings).resolve_asset_graph()
    for model in CATALOG.models:
        keys = keys_of(model)
        upstream = graph.get(keys.predictions).parent_keys
        assert upstream == {features_key(model.features)}, upstream
        assert keys.champion not in upstream


def test_the_landing_sensor_targets_a_named_job_and_descriptions_keep_their_placeholders(settings: Settings) -> None:
    defs = build_definitions(CATALOG, settings)
    sensor = defs.resolve_sensor_def("landing_sensor")
    assert [t.job_name for t in sensor.targets] == [LANDING_JOB]
    assert defs.resolve_job_def(LANDING_JOB).description
    # Markdown drops <word> outside code spans: every placeholder in a description must sit in backticks
    graph = defs.resolve_asset_graph()
    texts = [graph.get(k).description or "" for k in graph.get_all_asset_keys()]
    texts += [s.description or "" for s in defs.sensors or []]
    for text in texts:
        outside_code = re.sub(r"`[^`]*`", "", text)
        assert not re.search(r"<[a-z_]+>", outside_code), text


def test_the_training_window_keeps_the_newest_months(settings: Settings) -> None:
    """Three months built, a window of two ($MLOPS_TRAINING_WINDOW_MONTHS=2): the training set spans the newest two
    (the test month included)."""
    months = ["2013-01", "2013-02", "2013-03"]
    assert main(["replay", "--through", "2013-03", "--every", "20"]) == 0
    defs = build_definitions(CATALOG, replace(settings, training_window_months=2))
    training_set = keys_of(FLIGHT_DELAY).training_set
    with dg.DagsterInstance.get() as instance:
        assert defs.resolve_job_def("feature_pipeline").execute_in_process(instance=instance, tags=range_tags(months))
        retraining = defs.resolve_job_def(retraining_job_name(FLIGHT_DELAY))
        result = retraining.execute_in_process(instance=instance, asset_selection=[training_set])
        assert result.success
        [materialization] = result.asset_materializations_for_node(result.all_node_events[0].node_name)
    assert materialization.metadata["months"].value == "2013-02, 2013-03"
    assert materialization.metadata["months_left_out"].value == 1
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        stored = conn.execute(f'SELECT DISTINCT _month FROM {FLIGHT_DELAY.name}."training_set" ORDER BY 1').fetchall()
    assert [m for (m,) in stored] == ["2013-02", "2013-03"]
    # a window of one month leaves no test month: the run says so, and what to change
    narrow = build_definitions(CATALOG, replace(settings, training_window_months=1))
    with dg.DagsterInstance.get() as instance:
        failed = narrow.resolve_job_def(retraining_job_name(FLIGHT_DELAY)).execute_in_process(
            instance=instance, asset_selection=[training_set], raise_on_error=False
        )
    assert not failed.success
    [failure] = [event for event in failed.all_events if event.is_step_failure]
    message = str(failure.step_failure_data.user_failure_data.description)
    assert "it has ['2013-03'] of the 3 built: widen the training window" in message
    assert "MLOPS_TRAINING_WINDOW_MONTHS: now 1" in message

    def refusal() -> str:
        with dg.DagsterInstance.get() as instance:
            refused = defs.resolve_job_def(retraining_job_name(FLIGHT_DELAY)).execute_in_process(
                instance=instance, asset_selection=[training_set], raise_on_error=False
            )
        assert not refused.success
        [failure] = [event for event in refused.all_events if event.is_step_failure]
        return str(failure.step_failure_data.user_failure_data.description)

    # February built by an older feature set (the feature code changed; only the new month was rebuilt since): the
    # model would learn from other features than it is tested and served on, under today's feature set in its record
    table = f"features.{FLIGHT_DELAY.features.name}"
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        conn.execute(f"UPDATE {table} SET feature_set_version = 'an0lder0ne00' WHERE _month = '2013-02'")
    message = refusal()
    assert "of 2013-02 (by an0lder0ne00) were built by another feature set than today's" in message, message
    assert "rebuild those months first" in message
    # February never built (its batch rejected): no validation weeks before the test month March
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        conn.execute(f"DELETE FROM {table} WHERE _month = '2013-02'")
    message = refusal()
    assert "no features for 2013-02, the month before the test month 2013-03" in message, message
    assert "`mlops replay --month 2013-02`" in message


def test_training_on_one_built_month_says_to_land_another(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--month", "2013-02", "--every", "50"]) == 0
    # one month landed by hand: what happens next (a range is what `make pipeline` lands before running the job)
    assert "Next: with `make ui` running, the landing sensor refreshes 2013-02 by itself" in capsys.readouterr().out
    assert main(["replay", "--through", "2013-02", "--every", "50"]) == 0
    assert "Next:" not in capsys.readouterr().out
    defs = build_definitions(CATALOG, settings)
    with dg.DagsterInstance.get() as instance:
        assert defs.resolve_job_def("feature_pipeline").execute_in_process(
            instance=instance, tags=range_tags(["2013-02"])
        )
        result = defs.resolve_job_def(retraining_job_name(FLIGHT_DELAY)).execute_in_process(
            instance=instance, asset_selection=[keys_of(FLIGHT_DELAY).training_set], raise_on_error=False
        )
    [failure] = [event for event in result.all_events if event.is_step_failure]
    message = str(failure.step_failure_data.user_failure_data.description)
    assert "it has ['2013-02'] of the 1 built: land another month (`mlops replay --month YYYY-MM`)" in message


def test_the_training_window_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRAINING_WINDOW_ENV, "6")
    assert load_settings().training_window_months == 6
    assert build_resources(load_settings())["training"].window_months == 6  # type: ignore[attr-defined]
    monkeypatch.delenv(TRAINING_WINDOW_ENV)
    assert load_settings().training_window_months == 12
    for wrong in ("-1", "twelve"):
        monkeypatch.setenv(TRAINING_WINDOW_ENV, wrong)
        with pytest.raises(ValueError, match=TRAINING_WINDOW_ENV):
            load_settings()


def test_the_training_pipeline_launched_without_months_says_how_to_pick_them(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    """From the Launchpad with its partition left empty (or `dagster job execute` without tags) each monthly step read
    Dagster's "Cannot access partition_key for a non-partitioned run", and nothing said what to do."""
    from mlops_assets.threaded_executor import execute_with_job_executor

    assert main(["replay", "--through", "2013-01", "--every", "50"]) == 0
    job = build_definitions(CATALOG, settings).resolve_job_def("training_pipeline")
    with dg.DagsterInstance.get() as instance:
        result = execute_with_job_executor(job, instance, run_config=PROGRESS_CONSOLE_CONFIG)
    assert not result.success
    assert not [e for e in result.all_events if e.is_step_start]  # refused before any step
    printed = capfd.readouterr().err
    assert re.search(
        r"training_pipeline: FAILED in [0-9.]+ s: training_pipeline names no partition, and its partitioned assets "
        r"\(features/cancellation_features, .*\) need one: in the UI, pick the months",
        printed,
    ), printed
    assert "Cannot access partition_key" not in printed
