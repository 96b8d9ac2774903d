"""Automatic rollback: a deliberately bad model (trained on shuffled labels) is forced into production past the
gates; once the next month's labels are in, the platform's own sensors roll it back to the last gated champion,
record why and retrain, with nobody acting."""

import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl

from mlops_assets.core.drift import reference_profile
from mlops_assets.core.flights import FLIGHTS, replay_months
from mlops_assets.core.policy import RollbackPolicy, rollback_reasons
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.core.training import TrainingSet, train_model
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.jobs import RETRAIN_JOB
from mlops_assets.defs.sensors import TRIGGER_TAG
from mlops_assets.defs.train import read_training_set
from mlops_assets.simulation import SENSORS
from mlops_assets.ticks import Ticker
from mlops_assets_tests.serving.conftest import Client, running

SPEC = FLIGHTS.training_features


def force_bad_champion(settings: Settings, registry: Registry) -> str:
    """Train on the real training set with its labels shuffled, register it and make it champion by hand."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        built = read_training_set(conn, SPEC)
    shuffled = built.frame.with_columns(pl.col(SPEC.label).shuffle(seed=7))
    bad_set = TrainingSet(shuffled, built.content_hash, built.test_month, built.valid_start, built.test_start)
    bad = train_model(bad_set, SPEC, {"num_leaves": 63, "min_data_in_leaf": 5, "num_threads": 2}, 200, 200)
    train = bad_set.part("train")
    profile = reference_profile(train, SPEC.numeric, SPEC.categorical, bad.predict(train), SPEC.label)
    metadata = {"model": "flights", "data": built.summary(), "encoder": bad.encoder.to_json(), "note": "shuffled labels"}
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
            status, body = self.client.get("/models")
            version = body["champion"]["version"] if status == 200 and body.get("champion") else None
            if version and (not self.seen or self.seen[-1] != version):
                self.seen.append(version)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()
        return self.seen


def test_a_bad_champion_is_rolled_back_by_itself(settings: Settings, tmp_path: Path) -> None:
    replay_months(settings.landing_dir, ["2013-01", "2013-02", "2013-03"], every=20)
    registry = Registry(settings.registry_dir)
    defs = build_definitions(FLIGHTS, settings)
    with dg.instance_for_test() as instance:
        ticker = Ticker(defs, instance, SENSORS)
        ticker.settle()
        assert ticker.execute_job(RETRAIN_JOB, {TRIGGER_TAG: "bootstrap"}).success
        good = registry.alias(CHAMPION)
        assert good is not None
        with running(settings) as server:  # the real service, answering from the same registry
            watcher = ChampionWatcher(server.port)
            bad = force_bad_champion(settings, registry)
            time.sleep(1.5)  # the service picks up the forced champion
            replay_months(settings.landing_dir, ["2013-04"], every=20)
            runs = ticker.settle()
            time.sleep(1.5)
            served = watcher.stop()
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
    assert not [r for r in runs if r.tags.get(TRIGGER_TAG) in ("drift", "performance")]


def test_rollback_rules() -> None:
    policy = RollbackPolicy()
    reference = {"share_above_0_99": 0.0, "share_below_0_01": 0.01, "std": 0.15}
    healthy = {"champion_rows": 5000, "champion_live_roc_auc": 0.73, "champion_score_std": 0.14,
               "champion_share_above_0_99": 0.0, "champion_share_below_0_01": 0.02}  # fmt: skip
    assert rollback_reasons(healthy, 0.75, reference, policy) == []
    assert "below the required" in rollback_reasons({**healthy, "champion_live_roc_auc": 0.69}, 0.75, reference, policy)[0]
    assert "extreme" in rollback_reasons({**healthy, "champion_share_above_0_99": 0.3}, 0.75, reference, policy)[0]
    assert "collapsed" in rollback_reasons({**healthy, "champion_score_std": 0.01}, 0.75, reference, policy)[0]
    assert "failed" in rollback_reasons({**healthy, "online_champion_error_rate": 0.02}, 0.75, reference, policy)[0]
    # too few labelled rows: quality is not judged (errors still are)
    assert rollback_reasons({**healthy, "champion_rows": 50, "champion_live_roc_auc": 0.5}, 0.75, reference, policy) == []
    assert np.isclose(policy.max_auc_drop, 0.05)
