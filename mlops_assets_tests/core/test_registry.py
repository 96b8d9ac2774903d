"""The model registry: immutable versions, atomic aliases, an append-only log, and refusal of tampered models."""

from pathlib import Path

import pytest

from mlops_assets.core.registry import CHAMPION, Registry, RegistryIntegrityError, UnknownVersionError

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


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_a_damaged_model_is_refused(tmp_path: Path, damage: str) -> None:
    registry = Registry(tmp_path)
    version = _register(registry)
    path = registry.get(version).model_path
    path.write_text(MODEL.replace("num_class=1", "num_class=2") if damage == "tamper" else MODEL[:5])
    with pytest.raises(RegistryIntegrityError, match="does not match its checksum"):
        registry.model_text(version)


def test_aliases_move_with_a_logged_reason_and_refuse_unknown_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first, second = _register(registry), _register(registry, MODEL + "2")
    registry.set_alias(CHAMPION, first, "promoted", "first model", run_id="r1")
    registry.set_alias(CHAMPION, second, "promoted", "better AUC", run_id="r2")
    assert registry.alias(CHAMPION) == second
    assert registry.previous_champions() == [second, first]
    last = registry.events()[-1]
    assert (last["event"], last["version"], last["alias"], last["reason"]) == ("promoted", second, CHAMPION, "better AUC")
    with pytest.raises(UnknownVersionError):
        registry.set_alias(CHAMPION, "v0099", "promoted", "nope")
    assert registry.alias(CHAMPION) == second


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
