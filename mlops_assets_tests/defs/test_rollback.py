"""Automatic rollback: a deliberately bad model (trained on shuffled labels) is forced into production past the
gates; once the next month's labels are in, the platform's own sensors roll it back to the last gated champion,
record why and retrain, with nobody acting."""

import re
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.drift import reference_profile
from mlops_assets.core.records import LiveSummary
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.core.training import TrainingSet, train_model
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.keys import retraining_job_name, sensor_name
from mlops_assets.defs.monitor import latest_month_record
from mlops_assets.defs.sensors import TRIGGER_TAG
from mlops_assets.defs.train import read_training_set
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.models.flight_delay import FLIGHT_DELAY
from mlops_assets.ticks import Ticker
from mlops_assets_tests.conftest import instance_for_test
from mlops_assets_tests.serving.conftest import Client, running

SPEC = FLIGHT_DELAY.features
#: Every model's own sensors, as the daemon would run them: the flight_delay rollback must not move anyone else.
SENSORS = (
    "landing_sensor",
    *(sensor_name(m, what) for m in CATALOG.models for what in ("rollback", "drift", "performance")),
)


def force_bad_champion(settings: Settings, registry: Registry) -> str:
    """Train on the real training set with its labels shuffled, register it and make it champion by hand."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        built = read_training_set(conn, FLIGHT_DELAY)
    shuffled = built.frame.with_columns(pl.col(SPEC.label).shuffle(seed=7))
    bad_set = TrainingSet(shuffled, built.test_month, built.valid_start, built.test_start)
    bad = train_model(bad_set, SPEC, {"num_leaves": 63, "min_data_in_leaf": 5, "num_threads": 2}, 200, 200)
    train = bad_set.part("train")
    profile = reference_profile(train, SPEC.numeric, SPEC.categorical, bad.predict(train), SPEC.label)
    metadata = {
        "model": "flight_delay",
        "data": built.summary(SPEC.time_column),
        "encoder": bad.encoder.to_json(),
        "note": "shuffled labels",
    }
    version = registry.register(bad.text, metadata, profile, run_id=None).version
    registry.set_alias(CHAMPION, version, "forced", "test: a bad model forced past the promotion gates")
    return version


class ChampionWatcher:
    """Polls the running service's ``GET /models`` and records every champion version it answers with."""

    def __init__(self, port: int) -> None:
        self.client = Client(port)
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            status, body = self.client.get("/models/flight_delay")
            version = body["champion"]["version"] if status == 200 and body.get("champion") else None
            if version and (not self.seen or self.seen[-1] != version):
                self.seen.append(version)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()
        return self.seen


def test_a_bad_champion_is_rolled_back_by_itself(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replay_months(settings.landing_dir, ["2013-01", "2013-02", "2013-03"], every=20)
    registry = Registry(settings.model("flight_delay").registry_dir)
    others = {m.name: Registry(settings.model(m.name).registry_dir) for m in CATALOG.models if m.name != "flight_delay"}
    defs = build_definitions(CATALOG, settings)
    with instance_for_test() as instance:
        ticker = Ticker(defs, instance, SENSORS)
        ticker.settle()
        for model in CATALOG.models:
            assert ticker.execute_job(retraining_job_name(model), {TRIGGER_TAG: "bootstrap"}).success
        good = registry.alias(CHAMPION)
        assert good is not None
        other_champions = {name: r.alias(CHAMPION) for name, r in others.items()}
        with running(settings) as server:  # the real service, answering from the same registry
            watcher = ChampionWatcher(server.port)
            bad = force_bad_champion(settings, registry)
            time.sleep(1.5)  # the service picks up the forced champion
            replay_months(settings.landing_dir, ["2013-04"], every=20)
            runs = ticker.settle()
            time.sleep(1.5)
            served = watcher.stop()
        # the decision is visible in Dagster: an observation of flight_delay/champion with the reasons
        observed = instance.fetch_observations(dg.AssetKey(["flight_delay", "champion"]), limit=5).records
        decisions = [o.asset_observation.metadata for o in observed if o.asset_observation is not None]
        assert [(d["decision"].value, d["from_version"].value) for d in decisions] == [("rolled_back", bad)]
        # the version it went back to was first scored on the bad champion's rows of April, and did better there
        april = latest_month_record(instance, dg.AssetKey(["flight_delay", "live_performance"]), LiveSummary, "2013-04")
        assert april is not None and april.champion is not None and april.fallback is not None
        assert april.fallback.version == good and april.fallback.rows == april.champion.rows
        assert april.fallback.live_roc_auc is not None and april.champion.live_roc_auc is not None
        assert april.fallback.live_roc_auc > april.champion.live_roc_auc + 0.05
        # and its scores' spread and extreme shares there kept (what tells a month that moved every model's scores)
        shares = (april.fallback.share_above_0_99, april.fallback.share_below_0_01)
        assert april.fallback.score_std is not None and april.fallback.score_std > 0.01
        assert all(share is not None and 0 <= share < 0.5 for share in shares), shares
    # the sensor's warning is said as the runs' progress lines are (it was Dagster's "... - dagster - WARNING - ...")
    said = capsys.readouterr().err
    rollback_sensor = sensor_name(FLIGHT_DELAY, "rollback")
    assert re.search(rf"(?m)^\d\d:\d\d:\d\d  {rollback_sensor} +flight_delay: rolled back {bad} -> {good}: ", said)
    assert " - dagster - WARNING - " not in said
    # the service served the bad model, then, with nobody acting, the previous version again
    assert served[:3] == [good, bad, good], served

    rolled = [e for e in registry.events() if e["event"] == "rolled_back"]
    assert len(rolled) == 1 and rolled[0]["version"] == good
    assert f"from {bad}" in rolled[0]["reason"] and "automatic rollback after 2013-04" in rolled[0]["reason"]
    assert "below the required" in rolled[0]["reason"]
    assert registry.alias(CHAMPION) != bad
    retrains = [r for r in runs if r.tags.get(TRIGGER_TAG) == "rollback"]
    assert len(retrains) == 1 and retrains[0].success and retrains[0].tags["mlops/champion"] == bad
    # the drift and performance sensors saw a month judged against a champion that no longer serves: no second retrain
    assert not [
        r
        for r in runs
        if r.tags.get(TRIGGER_TAG) in ("drift", "performance") and r.tags.get("mlops/model") == "flight_delay"
    ]
    # flight_delay's rollback left the other models alone: no rollback in their logs, and their champion moved (if
    # at all) only by their own promotion, in a run of their own retraining job
    own_runs = {name: {r.run_id for r in runs if r.tags.get("mlops/model") == name} for name in others}
    for name, other in others.items():
        assert not [e for e in other.events() if e["event"] in ("rolled_back", "rollback_impossible")]
        moves = [e for e in other.events() if e.get("alias") == CHAMPION and e["version"] != other_champions[name]]
        assert all(e["event"] == "promoted" and e["run_id"] in own_runs[name] for e in moves), moves
