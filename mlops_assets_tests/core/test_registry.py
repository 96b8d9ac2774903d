"""The model registry: immutable versions, atomic aliases, an append-only log, refusal of tampered models, and the
evaluations that promotion and the live rules read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets.core.records import EvaluationResult, RecordError
from mlops_assets.core.registry import (
    CHAMPION,
    AliasMovedError,
    IncompatibleFeaturesError,
    Registry,
    RegistryDamaged,
    RegistryIntegrityError,
    UnknownVersionError,
    evaluated_roc_auc,
    examine,
    logged_aliases,
    promote_by_hand,
    repair,
    rollback,
    rollback_candidate,
    rollback_targets,
    rollback_to_first_sound,
    rolled_back_from,
    set_shadow,
)
from mlops_assets.defs.sensors import required_auc
from mlops_assets.serving.models import metadata_summary

MODEL = "tree\nversion=v4\nnum_class=1\n"  # stands for a LightGBM text model: the registry treats it as bytes


def _register(registry: Registry, text: str = MODEL) -> str:
    return registry.register(text, {"metrics": {"valid": {"roc_auc": 0.7}}}, {"rows": 1}, run_id="run-1").version


def test_versions_are_numbered_immutable_folders_with_checksums(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert [_register(registry), _register(registry, MODEL + "x")] == ["v0001", "v0002"]
    entry = registry.get("v0002")
    assert entry.metadata["version"] == "v0002" and entry.metadata["run_id"] == "run-1"
    assert (entry.path / "model.sha256").read_text().split()[0] == entry.metadata["model_sha256"]
    assert registry.model_text("v0001") == MODEL
    assert not [p for p in (tmp_path / "versions").iterdir() if p.name.startswith(".")]  # no staging left behind
    assert [e["event"] for e in registry.events()] == ["registered", "registered"]


def test_a_metric_that_could_not_be_computed_is_stored_as_null_in_strict_json(tmp_path: Path) -> None:
    """Validation weeks holding one class give no AUC (NaN): metadata.json stays JSON any parser reads, and what
    reads it back (``GET /models``, ``mlops status --json``) gets None."""
    registry = Registry(tmp_path)
    metrics = {"valid": {"roc_auc": float("nan"), "log_loss": 0.12, "brier": float("inf")}}
    version = registry.register(MODEL, {"metrics": metrics}, {"rows": 1}, run_id="run-1").version

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in metadata.json")

    stored = json.loads((registry.get(version).path / "metadata.json").read_text(), parse_constant=refuse)
    assert stored["metrics"] == {"valid": {"roc_auc": None, "log_loss": 0.12, "brier": None}}
    assert metadata_summary({"metrics": metrics})["validation_auc"] is None  # a version stored before this change


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_a_damaged_model_is_refused(tmp_path: Path, damage: str) -> None:
    registry = Registry(tmp_path)
    version = _register(registry)
    path = registry.get(version).model_path
    path.write_text(MODEL.replace("num_class=1", "num_class=2") if damage == "tamper" else MODEL[:5])
    with pytest.raises(RegistryIntegrityError, match="does not match its checksum"):
        registry.model_text(version)


def test_a_rollback_skips_a_damaged_target_for_the_next_sound_one(tmp_path: Path) -> None:
    """The newest safe target fails its checksum: the rollback goes to the next one (the sensor used to raise on every
    tick, stuck, the bad champion serving); with none sound, nothing moves and each damaged one is named."""
    registry = Registry(tmp_path)
    first, second, third = (_register(registry, MODEL + str(n)) for n in range(3))
    for version in (first, second, third):
        registry.set_alias(CHAMPION, version, "promoted", "better AUC")
    registry.get(second).model_path.write_text("tampered")
    assert rollback_candidate(registry, third) == first  # what the rollback below picks, nothing moved
    assert registry.alias(CHAMPION) == third
    target, damaged = rollback_to_first_sound(registry, "live AUC fell", [second, first])
    assert target == first and registry.alias(CHAMPION) == first
    assert len(damaged) == 1 and damaged[0].startswith(f"{second} (") and "checksum" in damaged[0]
    assert rollback_to_first_sound(registry, "again", [second]) == (None, damaged)
    assert registry.alias(CHAMPION) == first


def test_aliases_move_with_a_logged_reason_and_refuse_unknown_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, first, "promoted", "first model", run_id="r1")
    registry.set_alias(CHAMPION, second, "promoted", "better AUC", run_id="r2")
    assert registry.alias(CHAMPION) == second
    assert registry.previous_champions() == [second, first]
    last = registry.events()[-1]
    assert (last["event"], last["version"], last["alias"]) == ("promoted", second, CHAMPION)
    assert last["reason"] == "better AUC"
    with pytest.raises(UnknownVersionError):
        registry.set_alias(CHAMPION, "v0099", "promoted", "nope")
    assert registry.alias(CHAMPION) == second


def test_a_rollback_never_returns_to_a_version_that_was_rolled_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    v1, v2, v3 = _register(registry), _register(registry, MODEL + "2"), _register(registry, MODEL + "3")
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    registry.set_alias(CHAMPION, v2, "promoted", "better AUC")
    assert rollback(registry, "v2 lost its live AUC", to=rollback_targets(registry)[1]) == v1
    assert registry.events()[-1]["from_version"] == v2
    # v1 degrades in turn: v2, the most recent promotion, was taken out for the same reason and is no way back
    assert rollback_targets(registry) == [v1]
    registry.set_alias(CHAMPION, v3, "promoted", "retrained")
    assert rollback_targets(registry) == [v3, v1]
    rollback(registry, "by hand", to=v1)
    assert rollback_targets(registry) == [v1]  # a rollback by hand takes v3 out as well
    # a rollback recorded before from_version existed names the version in its reason
    registry.log_event("rolled_back", version=v1, alias=CHAMPION, reason="by hand (from v0002)")
    assert "v0002" in rolled_back_from(registry)
    # a move decided from a champion another process has moved since is refused, not made over it
    with pytest.raises(AliasMovedError, match="champion is v0001 now, not v0003"):
        registry.set_alias(CHAMPION, v2, "promoted", "judged against v0003", expected=v3)
    # by hand without --to: never to and fro between two versions
    with pytest.raises(ValueError, match="no earlier champion to roll back to .current: v0001; rolled back before"):
        rollback(registry, "again")


def test_a_version_tried_by_hand_leaves_the_champion_it_replaced_in_service(tmp_path: Path) -> None:
    """A bug hunt's case: the only manual move was `mlops rollback --to`, so trying a rejected version took the
    gated champion out for ever, and putting it back by hand did not restore it: no rollback, by hand or by the
    sensor, could return to it, and a later champion had no rollback target at all."""
    registry = Registry(tmp_path)
    v1, v2, v3 = _register(registry), _register(registry, MODEL + "2"), _register(registry, MODEL + "3")
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    with pytest.raises(ValueError, match=f"{v2} was never champion: .* `mlops promote --model .* --to {v2}`"):
        rollback(registry, "trying v2", to=v2)
    assert promote_by_hand(registry, v2, "trying it") == v1
    assert registry.alias(CHAMPION) == v2
    assert rollback_targets(registry) == [v1]  # the sensor would return to v1; never to v2, which no gate passed
    assert rollback(registry, "the trial is over") == v1  # the undo: v2 is the one taken out
    assert rolled_back_from(registry) == {v2} and rollback_targets(registry) == [v1]
    # a version a rollback took out and a person put back by hand is in service again
    registry.set_alias(CHAMPION, v3, "promoted", "retrained")
    rollback(registry, "v3 lost its live AUC", to=v1)
    assert rolled_back_from(registry) == {v2, v3}
    rollback(registry, "v3 was fine: the month was odd", to=v3)
    assert rolled_back_from(registry) == {v2, v1} and rollback_targets(registry) == [v3]
    with pytest.raises(ValueError, match="already the champion"):
        promote_by_hand(registry, v3, "again")


def test_a_shadow_set_by_command_is_logged_and_survives_a_repair(tmp_path: Path) -> None:
    """A shadow set by editing aliases.json was passed by `mlops doctor` and dropped by `--repair`."""
    registry = Registry(tmp_path)
    v1, v2 = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, v2, "promoted", "first model")
    set_shadow(registry, v1, "the first model, frozen")
    assert logged_aliases(registry)["shadow"] == v1
    registry.aliases_path.write_text('{"champion": "v0002"}')  # damaged: the shadow lost
    repair(registry)
    assert registry.aliases() == {"champion": v2, "shadow": v1}
    set_shadow(registry, None, "done comparing")
    assert registry.alias("shadow") is None and all(f.ok for f in examine(registry))
    with pytest.raises(ValueError, match="the shadow is unset already"):
        set_shadow(registry, None, "again")
    with pytest.raises(ValueError, match=f"{v2} is the champion"):
        set_shadow(registry, v2, "the champion beside itself")
    (registry.versions_dir / v1 / "model.txt").write_text("changed")
    with pytest.raises(RegistryIntegrityError):
        set_shadow(registry, v1, "a damaged version scores nothing")


def test_a_repair_that_makes_the_shadow_champion_ends_the_shadow(tmp_path: Path) -> None:
    """The champion's file is damaged and the shadow is the champion before it: the rebuild hands the champion to the
    shadow's version, which left it the shadow too (paused in silence, `doctor` saying ok)."""
    registry = Registry(tmp_path)
    v1, v2 = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    registry.set_alias(CHAMPION, v2, "promoted", "better AUC")
    set_shadow(registry, v1, "the previous champion beside the new one")
    registry.get(v2).model_path.write_text("damaged")
    done = repair(registry)
    assert registry.aliases() == {"champion": v1}
    assert f"{v1}, the shadow, is the champion now: no shadow" in done
    assert logged_aliases(registry) == {"champion": v1, "shadow": None}  # the log says the same


def test_a_registration_that_fails_midway_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    registry = Registry(tmp_path)
    _register(registry)

    def crash(*_: object) -> None:
        raise KeyboardInterrupt  # the process is stopped while publishing the folder

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        _register(registry, MODEL + "never")
    monkeypatch.undo()
    assert registry.versions() == ["v0001"]
    assert [p.name for p in (tmp_path / "versions").iterdir()] == ["v0001"]  # the staging folder is gone too
    assert _register(registry, MODEL + "next") == "v0002"


def test_a_run_re_executed_after_a_crash_gets_back_the_version_it_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 after the version folder was renamed into place, before its ``registered`` event: the doctor names
    the version no event names, and the run's re-execution (same root run, same model bytes) gets that version back
    and logs its event, instead of a copy under the next id. Other bytes, or another run, make a new version."""
    import mlops_assets.core.registry as registry_module

    registry = Registry(tmp_path)

    def killed(*_: object, **__: object) -> None:
        raise KeyboardInterrupt  # the process dies before the event is written

    monkeypatch.setattr(registry_module.Registry, "log_event", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.register(MODEL, {}, {}, run_id="run-1", root_run_id="run-1")
    monkeypatch.undo()
    assert registry.versions() == ["v0001"] and registry.events() == []
    [finding] = [f for f in examine(registry) if f.what == "versions vs events.jsonl"]
    assert not finding.ok and "no `registered` event names v0001" in finding.detail

    again = registry.register(MODEL, {}, {}, run_id="run-2", root_run_id="run-1")  # `mlops resume`: a new run id
    assert again.version == "v0001" and registry.versions() == ["v0001"]
    assert [(e["event"], e["version"], e["run_id"]) for e in registry.events()] == [("registered", "v0001", "run-1")]
    assert all(f.ok for f in examine(registry))
    assert registry.register(MODEL, {}, {}, run_id="run-3", root_run_id="run-1").version == "v0001"  # once only
    assert len(registry.events()) == 1
    assert registry.register(MODEL + "other", {}, {}, run_id="run-4", root_run_id="run-1").version == "v0002"
    assert registry.register(MODEL, {}, {}, run_id="run-5", root_run_id="run-5").version == "v0003"  # a new run


def test_the_doctor_logs_a_version_no_event_names_and_removes_dead_staging_folders(tmp_path: Path) -> None:
    import os
    import time

    registry = Registry(tmp_path)
    _register(registry)
    _register(registry, MODEL + "2")
    lines = registry.events_path.read_text().splitlines()
    registry.events_path.write_text(lines[0] + "\n")  # v0002's event lost (a crash, a hand edit)
    dead = registry.versions_dir / ".staging-abc123"  # a registration killed before its rename, hours ago
    dead.mkdir()
    (dead / "model.txt").write_text(MODEL)
    hours_ago = time.time() - 3 * 3600
    os.utime(dead, (hours_ago, hours_ago))
    young = registry.versions_dir / ".staging-def456"  # another process's registration under way: left alone
    young.mkdir()
    cut = registry.root / ".aliases.json.x1y2.tmp"  # an aliases write killed before its rename
    cut.write_text("{")
    os.utime(cut, (hours_ago, hours_ago))
    problems = {f.what: f.detail for f in examine(registry) if not f.ok}
    assert "no `registered` event names v0002" in problems["versions vs events.jsonl"]
    assert (
        "versions/.staging-abc123" in problems["unfinished writes"]
        and ".aliases.json.x1y2.tmp" in (problems["unfinished writes"])
    )
    assert ".staging-def456" not in problems["unfinished writes"]
    done = repair(registry)
    assert any("v0002" in d for d in done) and any(".staging-abc123" in d for d in done)
    assert not dead.exists() and not cut.exists() and young.exists()
    assert all(f.ok for f in examine(registry))
    assert [e["version"] for e in registry.events() if e["event"] == "registered"] == ["v0001", "v0002"]
    assert _register(registry, MODEL + "3") == "v0003"


def _evaluation(challenger: str, champion: str | None, auc: float = 0.74) -> EvaluationResult:
    values = {"roc_auc": auc, "pr_auc": 0.4, "log_loss": 0.45, "base_rate": 0.2, "rows": 900.0}
    slices = [
        {
            "slice": "origin",
            "value": "EWR",
            "rows": 900,
            "positives": 180,
            "base_rate": 0.2,
            "challenger_auc": auc,
            "challenger_log_loss": 0.45,
            **({"champion_auc": 0.73, "champion_log_loss": 0.46} if champion else {}),
        }
    ]
    roles = {"challenger": values, **({"champion": {**values, "roc_auc": 0.73}} if champion else {})}
    return EvaluationResult.from_evaluation("flights", challenger, champion, "2013-03", roles, slices, None)


def test_an_evaluation_is_stored_with_its_version_and_read_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry" / "flights")
    first, second = _register(registry), _register(registry, MODEL + "2")
    assert registry.evaluation(first) is None and evaluated_roc_auc(registry, first) is None  # never evaluated
    registry.save_evaluation(_evaluation(first, None), run_id="r1")
    registry.save_evaluation(_evaluation(second, first, auc=0.76), run_id="r2")
    assert registry.evaluation(second) == _evaluation(second, first, auc=0.76)
    assert evaluated_roc_auc(registry, first) == 0.74 and evaluated_roc_auc(registry, second) == 0.76
    assert (tmp_path / "registry" / "flights" / "evaluations" / f"{second}.json").exists()
    last = registry.events()[-1]
    assert (last["event"], last["version"], last["run_id"], last["champion"]) == ("evaluated", second, "r2", first)
    assert last["reason"] == f"evaluated on 2013-03 against {first}: ROC AUC 0.7600"
    registry.save_evaluation(_evaluation(second, None, auc=0.77))  # evaluated again: the latest one counts
    assert evaluated_roc_auc(registry, second) == 0.77
    assert [e["event"] for e in registry.events()].count("evaluated") == 3
    # promoted on 0.77 (as the champion step records it), then evaluated again as the champion on a newer month where
    # it does worse: the bar it is held to live stays the AUC it was promoted on
    registry.set_alias(CHAMPION, second, "promoted", "better AUC", roc_auc=0.77, test_month="2013-03")
    registry.save_evaluation(_evaluation(second, None, auc=0.71))
    assert registry.evaluation(second) == _evaluation(second, None, auc=0.71)
    assert evaluated_roc_auc(registry, second) == 0.77
    with pytest.raises(UnknownVersionError):
        registry.save_evaluation(_evaluation("v0099", None))


def test_a_champion_forced_in_by_hand_is_held_to_the_last_gated_champion_still_standing(tmp_path: Path) -> None:
    """v1 and v2 came in through the gates; v2 was rolled back for its live quality. A v3 forced in by hand is held
    to v1's AUC, not to that of v2, which no longer stands; a gated champion is held to its own."""
    registry = Registry(tmp_path)
    v1, v2, v3 = _register(registry), _register(registry, MODEL + "2"), _register(registry, MODEL + "3")
    registry.set_alias(CHAMPION, v1, "promoted", "first model", roc_auc=0.70, test_month="2013-02")
    registry.set_alias(CHAMPION, v2, "promoted", "better AUC", roc_auc=0.80, test_month="2013-03")
    assert required_auc(registry, v2) == 0.80
    rollback(registry, "v2 lost its live AUC")
    registry.set_alias(CHAMPION, v3, "forced", "by hand, past the gates")
    assert required_auc(registry, v3) == 0.70
    assert required_auc(registry, v1) == 0.70
    # every gated champion rolled back: the last one that passed the gates is the only bar there is
    rollback(registry, "by hand", to=v1)
    registry.log_event("rolled_back", version=v3, alias=CHAMPION, reason="by hand", from_version=v1)
    assert required_auc(registry, v3) == 0.80


def test_deleting_the_reports_folder_cannot_matter(tmp_path: Path) -> None:
    """Reports are for people; what promotion and the live rules read is in the registry."""
    registry = Registry(tmp_path / "registry")
    version = _register(registry)
    registry.save_evaluation(_evaluation(version, None))
    reports = tmp_path / "reports" / "evaluation" / version  # where evaluations used to be read from
    reports.mkdir(parents=True)
    (reports / "evaluation.json").write_text(json.dumps({"metrics": {"challenger": {"roc_auc": 0.99}}}))
    assert evaluated_roc_auc(registry, version) == 0.74
    shutil.rmtree(tmp_path / "reports")
    assert evaluated_roc_auc(registry, version) == 0.74
    assert registry.evaluation(version) == _evaluation(version, None)


def test_a_damaged_or_misplaced_evaluation_fails_loudly(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry, MODEL + "2")
    registry.save_evaluation(_evaluation(first, None))
    path = registry.evaluations_dir / f"{first}.json"
    data = json.loads(path.read_text())
    data["metrics"]["challenger"]["auc"] = data["metrics"]["challenger"].pop("roc_auc")  # renamed by hand
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"metrics\['challenger'\]: missing metric\(s\) roc_auc"):
        evaluated_roc_auc(registry, first)  # not None: that would read as "never evaluated"
    registry.save_evaluation(_evaluation(first, None))
    shutil.copy(registry.evaluations_dir / f"{first}.json", registry.evaluations_dir / f"{second}.json")
    with pytest.raises(RecordError, match=f"challenger_version is '{first}', expected '{second}'"):
        registry.evaluation(second)
    path.write_text('{"schema": "evaluation", "schema_')  # cannot happen through save_evaluation (atomic)
    with pytest.raises(RecordError, match="not JSON"):
        registry.evaluation(first)


def test_aliases_moved_by_two_processes_at_once_lose_no_move(tmp_path: Path) -> None:
    """`mlops rollback` by hand and the daemon's sensor, or a run's promotion, are separate processes: each
    read-modify-write of the aliases must see the other's, or one move is silently undone. Each process sets 150
    aliases of its own, each once: a move lost to the other process's write is never made again, so it shows."""
    registry = Registry(tmp_path)
    version = _register(registry)
    script = (
        "import sys; from pathlib import Path; from mlops_assets.core.registry import Registry\n"
        "registry = Registry(Path(sys.argv[1]))\n"
        "for i in range(150): registry.set_alias(f'{sys.argv[2]}{i}', sys.argv[3], 'promoted', 'race')\n"
    )
    movers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), prefix, version]) for prefix in ("a", "b")]
    assert [mover.wait(timeout=120) for mover in movers] == [0, 0]
    assert registry.aliases() == {f"{prefix}{i}": version for prefix in ("a", "b") for i in range(150)}


def test_a_move_cut_short_after_its_event_is_reported_and_completed_by_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills (or the process dies) between a promotion's event and its aliases write: the event names the
    move, so the version counts as gated, `mlops doctor` reports the difference, and the retried promotion (the alias
    still differs) completes it."""
    import mlops_assets.core.registry as registry_module

    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, first, "promoted", "first model")
    real_write = registry_module.write_atomic

    def full_disk(path: Path, data: bytes) -> None:
        if path == registry.aliases_path:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(registry_module, "write_atomic", full_disk)
    with pytest.raises(OSError, match="No space left"):
        registry.set_alias(CHAMPION, second, "promoted", "better AUC", expected=first)
    monkeypatch.undo()
    assert registry.alias(CHAMPION) == first and registry.events()[-1]["version"] == second
    [finding] = [f for f in examine(registry) if f.what == "aliases.json vs events.jsonl"]
    assert not finding.ok and f"champion is {first} but the event log's last move named {second}" in finding.detail
    registry.set_alias(CHAMPION, second, "promoted", "better AUC", expected=first)  # the step's retry
    assert registry.alias(CHAMPION) == second and all(f.ok for f in examine(registry))


@pytest.mark.parametrize("aliases", [{}, {"challenger": "v0002"}, {"chmpion": "v0002"}])
def test_the_doctor_reports_an_alias_the_log_set_and_the_aliases_file_lacks(
    tmp_path: Path, aliases: dict[str, str]
) -> None:
    """A crash between a first promotion's event and its aliases write, or a hand edit, leaves aliases.json without
    the champion the log names: reported, and rebuilt by the repair."""
    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias("challenger", second, "challenger", "latest trained model")
    registry.set_alias(CHAMPION, first, "promoted", "first model")
    registry.aliases_path.write_text(json.dumps(aliases))
    [finding] = [f for f in examine(registry) if f.what == "aliases.json vs events.jsonl"]
    assert not finding.ok and f"champion is absent but the event log's last move named {first}" in finding.detail
    repair(registry)
    assert registry.alias(CHAMPION) == first and registry.alias("challenger") == second
    assert all(f.ok for f in examine(registry))


def test_the_same_evaluation_stored_again_is_not_logged_again(tmp_path: Path) -> None:
    """A re-executed run evaluates the same challenger against the same champion: one ``evaluated`` event; an
    evaluation that differs (another champion) is stored and logged."""
    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry, MODEL + "2")
    registry.save_evaluation(_evaluation(second, first), run_id="run-1")
    registry.save_evaluation(_evaluation(second, first), run_id="run-2")
    assert [e["run_id"] for e in registry.events() if e["event"] == "evaluated"] == ["run-1"]
    registry.save_evaluation(_evaluation(second, None), run_id="run-3")
    assert [e["run_id"] for e in registry.events() if e["event"] == "evaluated"] == ["run-1", "run-3"]
    assert registry.evaluation(second).champion_version is None  # type: ignore[union-attr]


def test_a_repair_never_hands_the_champion_back_to_a_rolled_back_version(tmp_path: Path) -> None:
    """v2 was rolled back to v1 for its live quality, then v1's file is damaged: the repair drops the damaged
    champion and does not fall back on v2, the last promotion in the log; it says there is no sound champion."""
    registry = Registry(tmp_path)
    v1, v2 = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    registry.set_alias(CHAMPION, v2, "promoted", "better AUC")
    rollback(registry, "live AUC fell", to=v1)
    registry.get(v1).model_path.write_text("tampered")
    done = repair(registry)
    assert registry.alias(CHAMPION) is None, done
    assert any("no sound champion" in line for line in done), done
    assert all(f.ok for f in examine(registry) if f.what.startswith("aliases")), examine(registry)
    assert repair(registry) == []  # repaired once: the event log and the aliases agree


def test_a_repair_keeps_a_version_a_person_brought_back_after_its_rollback(tmp_path: Path) -> None:
    """v2 was rolled back to v1, then brought back by hand (`mlops rollback --to v2`): v2 counts from then on, so a
    repair (of another damage) keeps it as the champion; the doctor is satisfied afterwards."""
    registry = Registry(tmp_path)
    v1, v2 = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    registry.set_alias(CHAMPION, v2, "promoted", "better AUC")
    rollback(registry, "live AUC fell", to=v1)
    rollback(registry, "it was the data, not the model", to=v2)
    registry.aliases_path.write_text("{damaged")
    done = repair(registry)
    assert registry.alias(CHAMPION) == v2, done
    assert all(f.ok for f in examine(registry)), examine(registry)
    assert repair(registry) == []


def test_an_event_after_a_cut_line_starts_a_line_of_its_own_and_survives_the_repair(tmp_path: Path) -> None:
    """The log's last line was cut short (a crash, a full disk). A rollback by hand then appended its event to the
    fragment, the repair set the whole line aside, and the champion went back to the version the person had left."""
    registry = Registry(tmp_path)
    v1, v2 = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    registry.set_alias(CHAMPION, v2, "promoted", "better AUC")
    data = registry.events_path.read_bytes()
    registry.events_path.write_bytes(data[:-40])  # v2's promotion, cut short
    assert rollback(registry, "by hand", to=v1) == v1
    done = repair(registry)
    assert registry.alias(CHAMPION) == v1, done
    assert [e["event"] for e in registry.events()][-2:] == ["promoted", "rolled_back"]
    assert (tmp_path / "events.damaged.jsonl").read_bytes() == data[:-40].splitlines(keepends=True)[-1] + b"\n"


def test_an_event_line_missing_its_fields_is_damage_named_and_set_aside(tmp_path: Path) -> None:
    """Valid JSON, but no time, version or reason: every reader of the log stopped on a KeyError, and the repair read
    it as 'champion cleared' and removed a sound champion."""
    registry = Registry(tmp_path)
    v1 = _register(registry)
    registry.set_alias(CHAMPION, v1, "promoted", "first model")
    with open(registry.events_path, "a") as log:
        log.write('{"event": "promoted", "alias": "champion"}\n')
    with pytest.raises(RegistryDamaged, match=r"line 3 is not an event \(no time, version, reason\)"):
        registry.events()
    assert not next(f for f in examine(registry) if f.what == "events.jsonl").ok
    repair(registry)
    assert registry.alias(CHAMPION) == v1 and len(registry.events()) == 2


def test_a_repair_loses_no_event_appended_meanwhile_by_another_process(tmp_path: Path) -> None:
    """A run (another process) logs events while the doctor repairs a damaged line: the repair rewrote the log
    under the aliases' lock only, and events appended between its read and its rewrite were lost."""
    registry = Registry(tmp_path)
    registry.log_event("registered", version="v0001", reason="first")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; from mlops_assets.core.registry import Registry\n"
                "r = Registry(Path(sys.argv[1]))\n"
                "for i in range(600): r.log_event('evaluated', version='v0001', reason=f'append {i}')"
            ),
            str(tmp_path),
        ]
    )
    repairs = 0
    while writer.poll() is None or repairs == 0:
        with open(registry.events_path, "a") as log:  # damage for the repair to set aside
            log.write("garbage\n")
        repair(registry)
        repairs += 1
    assert writer.wait() == 0
    repair(registry)
    appended = [e for e in registry.events() if e["reason"].startswith("append ")]
    assert len(appended) == 600, (len(appended), repairs)


def test_a_rollback_without_a_target_passes_over_a_damaged_champion(tmp_path: Path) -> None:
    """`mlops rollback` with no --to: the newest earlier champion fails its checksum, so the one before it is taken
    (the error used to name the damaged one again at every try); with none sound it says what to do."""
    registry = Registry(tmp_path)
    v1, v2, v3 = (_register(registry, MODEL + str(n)) for n in range(3))
    for version in (v1, v2, v3):
        registry.set_alias(CHAMPION, version, "promoted", "better AUC")
    registry.get(v2).model_path.write_text("tampered")
    assert rollback(registry, "by hand") == v1
    registry.set_alias(CHAMPION, v3, "promoted", "retrained")
    registry.get(v1).model_path.write_text("tampered")
    with pytest.raises(RegistryIntegrityError, match="every earlier champion fails its checksum or is missing"):
        rollback(registry, "by hand")
    assert registry.alias(CHAMPION) == v3


def test_a_repair_and_alias_moves_in_another_process_lose_no_move(tmp_path: Path) -> None:
    """`mlops doctor --repair` rebuilds the aliases while a promotion moves them in another process: the repair
    holds the aliases' lock, so no move is undone by its stale map."""
    registry = Registry(tmp_path)
    version = _register(registry)
    script = (
        "import sys; from pathlib import Path; from mlops_assets.core.registry import Registry\n"
        "registry = Registry(Path(sys.argv[1]))\n"
        "for i in range(150): registry.set_alias(f'a{i}', sys.argv[2], 'promoted', 'race')\n"
    )
    mover = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), version])
    while mover.poll() is None:
        # a damaged line makes every repair rewrite the log and rebuild the aliases
        with open(registry.events_path, "a", encoding="utf-8") as handle:
            handle.write("{damaged\n")
        repair(registry)
    assert mover.wait(timeout=120) == 0
    assert registry.aliases() == {f"a{i}": version for i in range(150)}


def test_a_rollback_never_goes_to_a_version_trained_on_other_features(tmp_path: Path) -> None:
    """The feature SQL changed and v3 was trained on the new features; v2 and v1 on the old ones. v3 degrades: a
    rollback to v2 would serve a model whose columns the online store no longer has (every request would fail), so the
    sensor's rollback passes over them and `mlops rollback` refuses them, saying to retrain."""
    registry = Registry(tmp_path)

    def trained_on(features: str, n: int) -> str:
        return registry.register(MODEL + str(n), {"feature_set_version": features}, {"rows": 1}, run_id=None).version

    v1, v2, v3 = trained_on("old", 1), trained_on("old", 2), trained_on("new", 3)
    for version in (v1, v2, v3):
        registry.set_alias(CHAMPION, version, "promoted", "better AUC")
    assert rollback_candidate(registry, v3, feature_set="new") is None
    assert rollback_candidate(registry, v3, feature_set="old") == v2
    target, passed_over = rollback_to_first_sound(registry, "live AUC fell", [v2, v1], feature_set="new")
    assert target is None and registry.alias(CHAMPION) == v3
    assert [p.split(" ")[0] for p in passed_over] == [v2, v1]
    assert "trained on feature set old, the features are now new" in passed_over[0]
    with pytest.raises(IncompatibleFeaturesError, match="every earlier champion .* another feature set"):
        rollback(registry, "by hand", feature_set="new")
    with pytest.raises(IncompatibleFeaturesError, match=f"{v1} was trained on feature set old"):
        rollback(registry, "by hand", to=v1, feature_set="new")
    v4 = trained_on("new", 4)
    registry.set_alias(CHAMPION, v4, "promoted", "retrained")
    assert rollback(registry, "by hand", feature_set="new") == v3  # the newest earlier one on today's features
