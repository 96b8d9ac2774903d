"""The model registry: immutable versions, aliases and an append-only event log, as plain files.

Layout (below ``$MLOPS_DATA_DIR/registry``)::

    versions/<version>/model.txt       the LightGBM model in its text format (never pickled)
    versions/<version>/model.sha256    its checksum, in ``sha256sum`` format
    versions/<version>/metadata.json   lineage, params, metrics, feature vocabulary, the checksum again
    versions/<version>/profile.json    reference profile of the training features and scores (for drift checks)
    evaluations/<version>.json         its latest evaluation as the challenger (``core.records.EvaluationResult``)
    aliases.json                       {"champion": "v0002", "shadow": null, ...}
    events.jsonl                       registered / evaluated / promoted / rejected / rolled_back, one JSON per line

A version folder is written under a temporary name and renamed into place, so it appears whole or not at all; aliases
and evaluations are replaced atomically; events are appended. Every load verifies the checksum: a tampered or truncated
model is refused, never loaded. Readers need no database, so sensors and the serving process can read it while a run
writes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops_assets.core.landing import sha256_bytes, write_atomic
from mlops_assets.core.records import EvaluationResult, RecordError, json_safe

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
#: A registration's files are written here first, then renamed into ``versions/vNNNN`` in one step.
STAGING_PREFIX = ".staging-"
#: A staging folder this old is a registration that died (one takes seconds): the next registration removes it.
STAGING_STALE_S = 3600.0
CHAMPION = "champion"
#: The alias of a model that scores every request and every month beside the champion, never answering.
SHADOW = "shadow"
#: A person made a version champion without the gates (`mlops promote`).
PROMOTED_BY_HAND = "promoted_by_hand"
#: The events that move the champion: through the gates, by a person, or back.
CHAMPION_MOVES = ("promoted", PROMOTED_BY_HAND, "rolled_back")
#: Serializes alias updates within a process (every registry: they are rare and quick).
_ALIASES_LOCK = threading.Lock()
#: Serializes event-log appends and rewrites within a process (taken after ``_ALIASES_LOCK`` when both are).
_EVENTS_LOCK = threading.Lock()
#: ``set_alias(expected=...)``'s default: move the alias whatever it names now.
ANY_VERSION: Any = object()


class AliasMovedError(ValueError):
    """An alias moved by another process between a decision and its move."""


class RegistryIntegrityError(RuntimeError):
    """A registry artifact does not match its checksum (tampered or truncated): it is never loaded."""


class RegistryDamaged(RuntimeError):
    """A registry file cannot be read (hand-edited, truncated): one line naming the file, what is wrong and the
    command that repairs it."""


def _repair_hint(root: Path) -> str:
    return f"`mlops doctor --model {root.name} --repair` rebuilds it from the event log"


class UnknownVersionError(LookupError):
    """No such version in the registry."""


@dataclass(frozen=True)
class ModelVersion:
    """A registered version: its id, folder and metadata."""

    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / "model.txt"


class Registry:
    """A file-based model registry rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.aliases_path = root / "aliases.json"
        self.events_path = root / "events.jsonl"
        self.evaluations_dir = root / "evaluations"

    # --- versions ------------------------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """All version ids, oldest first."""
        if not self.versions_dir.exists():
            return []
        found = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def register(
        self,
        model_text: str,
        metadata: dict[str, Any],
        profile: dict[str, Any],
        run_id: str | None,
        root_run_id: str | None = None,
    ) -> ModelVersion:
        """Store a new immutable version and log ``registered``. Returns it with its assigned id.

        ``root_run_id``: the run that ``run_id`` re-executes (itself for a first attempt). A re-execution of a run
        that registered the same model before it stopped (a crash after the version was stored, before the step
        ended) gets that version back, with its ``registered`` event if the crash came before it: one version per
        training, whatever the retries."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        data = model_text.encode()
        digest = sha256_bytes(data)
        if root_run_id is not None:
            earlier = self._registered_by(root_run_id, digest)
            if earlier is not None:
                return earlier
        self._sweep_staging()
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.versions_dir))
        try:
            (staging / "model.txt").write_bytes(data)
            (staging / "model.sha256").write_text(f"{digest}  model.txt\n")
            (staging / "profile.json").write_text(json.dumps(profile, indent=1, sort_keys=True))
            for _ in range(100):  # another writer may take the next id first: take the one after
                existing = self.versions()
                version = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
                full = {
                    **metadata,
                    "version": version,
                    "model_sha256": digest,
                    "registered_at": _now(),
                    "run_id": run_id,
                    **({"root_run_id": root_run_id} if root_run_id is not None else {}),
                }
                (staging / "metadata.json").write_text(
                    json.dumps(json_safe(full), indent=1, sort_keys=True, default=str, allow_nan=False)
                )
                for path in staging.iterdir():
                    with open(path, "rb") as handle:
                        os.fsync(handle.fileno())
                try:
                    os.rename(staging, self.versions_dir / version)
                except OSError as error:
                    if error.errno in (errno.EEXIST, errno.ENOTEMPTY):  # taken meanwhile: try the next id
                        continue
                    raise  # a full disk or a permission: say so, not "could not allocate"
                break
            else:
                raise RuntimeError("could not allocate a registry version id")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.log_event("registered", version=version, run_id=run_id, reason="new version from training")
        return self.get(version)

    def _registered_by(self, root_run_id: str, digest: str) -> ModelVersion | None:
        """The version an earlier attempt of run ``root_run_id`` registered with these model bytes, its event logged
        now if that attempt stopped before logging it; None when there is none."""
        for version in reversed(self.versions()):
            try:
                entry = self.get(version)
            except RegistryIntegrityError:
                continue
            if entry.metadata.get("root_run_id") == root_run_id and entry.metadata.get("model_sha256") == digest:
                if version not in self.logged_versions():
                    self.log_event(
                        "registered",
                        version=version,
                        run_id=entry.metadata.get("run_id"),
                        reason="new version from training (logged by its run's re-execution: the first attempt "
                        "stopped after storing it)",
                    )
                return entry
        return None

    def logged_versions(self, event: str = "registered") -> set[str]:
        """The versions an ``event`` event names (an unreadable log names none)."""
        try:
            return _versions_named(self.events(), event)
        except RegistryDamaged:
            return set()

    def staging_leftovers(self, older_than_s: float = STAGING_STALE_S) -> list[Path]:
        """What writes that never finished left behind (a crash): folders of registrations not renamed into place
        (whole model copies no version names), and the temporary files of atomic writes not renamed over
        ``aliases.json`` or an evaluation. Only those older than ``older_than_s``: a younger one may be another
        process's write under way."""
        cutoff = datetime.now(UTC).timestamp() - older_than_s
        found = [
            *(self.versions_dir.glob(f"{STAGING_PREFIX}*") if self.versions_dir.exists() else []),
            *(self.root.glob(".*.tmp") if self.root.exists() else []),
            *(self.evaluations_dir.glob(".*.tmp") if self.evaluations_dir.exists() else []),
        ]
        return sorted(path for path in found if path.stat().st_mtime < cutoff)

    def _sweep_staging(self) -> None:
        for path in self.staging_leftovers():
            _remove(path)

    def get(self, version: str) -> ModelVersion:
        path = self.versions_dir / version
        if not VERSION_PATTERN.match(version) or not path.is_dir():
            raise UnknownVersionError(f"no model version {version!r}; known: {', '.join(self.versions()) or 'none'}")
        if not (path / "metadata.json").is_file():  # registered whole (staged, then renamed): a file lost since
            raise RegistryIntegrityError(
                f"{path / 'metadata.json'} is missing: version {version} was damaged and will not be loaded "
                "(rollbacks pass over it). Restore the file, or retrain."
            )
        try:
            metadata = json.loads((path / "metadata.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RegistryIntegrityError(
                f"{path / 'metadata.json'} is not valid JSON ({error}): version {version} was damaged and will not be "
                "loaded (rollbacks pass over it). Restore the file, or retrain."
            ) from None
        if not isinstance(metadata, dict):
            raise RegistryIntegrityError(f"{path / 'metadata.json'} is not a JSON object: version {version} is damaged")
        return ModelVersion(version, path, metadata)

    def model_text(self, version: str) -> str:
        """The model's text, after verifying it against both recorded checksums."""
        entry = self.get(version)
        try:
            data = entry.model_path.read_bytes()
            recorded = ((entry.path / "model.sha256").read_text(errors="replace").split() or [""])[0]
        except OSError as error:  # a file of the version lost, or unreadable
            raise RegistryIntegrityError(
                f"model {version} cannot be read ({error.strerror or error}: {error.filename}): it will not be loaded. "
                "Restore the file, roll back to another version (`mlops rollback`) or retrain."
            ) from None
        actual = sha256_bytes(data)
        if actual != recorded or actual != entry.metadata.get("model_sha256"):
            raise RegistryIntegrityError(
                f"model {version} does not match its checksum (sha256 {actual[:12]}, recorded "
                f"{recorded[:12] or 'none'}): it was "
                "modified or truncated and will not be loaded. Roll back to another version (`mlops rollback`) or "
                "retrain."
            )
        return data.decode()

    def profile(self, version: str) -> dict[str, Any]:
        return json.loads((self.get(version).path / "profile.json").read_text())

    # --- evaluations ---------------------------------------------------------------------------------------------

    def save_evaluation(self, result: EvaluationResult, run_id: str | None = None) -> None:
        """Store ``result`` as the evaluation of its challenger version (replacing an earlier one atomically: the
        version was evaluated again, e.g. against a new champion) and log ``evaluated``. Promotion and the live
        rules read it here, not from the reports folder, which is for people and may be deleted."""
        version = result.challenger_version
        self.get(version)  # only a registered version has an evaluation
        data = json.dumps(result.to_json(), indent=1, allow_nan=False).encode()
        path = self.evaluations_dir / f"{version}.json"
        if path.exists() and path.read_bytes() == data and version in self.logged_versions("evaluated"):
            return  # the same evaluation again (a re-executed run): already stored and logged
        write_atomic(path, data)
        auc = result.metrics["challenger"].get("roc_auc")
        self.log_event(
            "evaluated",
            version=version,
            run_id=run_id,
            champion=result.champion_version,
            test_month=result.test_month,
            reason=f"evaluated on {result.test_month} against {result.champion_version or 'no champion'}: "
            f"ROC AUC {'undefined' if auc is None else f'{auc:.4f}'}",
        )

    def evaluation(self, version: str) -> EvaluationResult | None:
        """The latest evaluation of ``version`` (None: never evaluated). Raises :class:`RecordError` when the stored
        file does not match the schema or belongs to another version: it fails loudly rather than read as absent."""
        path = self.evaluations_dir / f"{version}.json"
        if not path.exists():
            return None
        try:
            result = EvaluationResult.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise RecordError(f"EvaluationResult in {path}: not JSON ({error})") from error
        except RecordError as error:  # the file named: the record's own message says only what is wrong in it
            raise RecordError(f"{path}: {error}") from error
        if result.challenger_version != version:
            raise RecordError(
                f"EvaluationResult in {path}: challenger_version is {result.challenger_version!r}, expected {version!r}"
            )
        return result

    # --- aliases and events --------------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str | None]:
        if not self.aliases_path.exists():
            return {}
        try:
            text = self.aliases_path.read_text()
        except UnicodeDecodeError as error:
            raise RegistryDamaged(
                f"{self.aliases_path} is not valid JSON ({error}): {_repair_hint(self.root)}"
            ) from None
        return self.parse_aliases(text)

    def parse_aliases(self, text: str) -> dict[str, str | None]:
        """The aliases in ``text`` (what ``aliases.json`` held when read), or :class:`RegistryDamaged` naming the file
        and the command that repairs it."""
        try:
            aliases = json.loads(text)
        except json.JSONDecodeError as error:
            raise RegistryDamaged(
                f"{self.aliases_path} is not valid JSON ({error}): {_repair_hint(self.root)}"
            ) from None
        if not isinstance(aliases, dict) or not all(isinstance(v, str | None) for v in aliases.values()):
            raise RegistryDamaged(f"{self.aliases_path} is not a map of alias -> version: {_repair_hint(self.root)}")
        return aliases

    def alias(self, name: str) -> str | None:
        return self.aliases().get(name)

    def set_alias(
        self,
        name: str,
        version: str | None,
        event: str,
        reason: str,
        run_id: str | None = None,
        expected: str | None = ANY_VERSION,
        **details: Any,
    ) -> None:
        """Point ``name`` at ``version`` (or clear it) atomically, and log why (with ``details`` in the event).

        ``expected``: the version the caller decided from; when another process moved the alias meanwhile, the move
        is refused (:class:`AliasMovedError`) rather than undoing that one in silence.
        """
        if version is not None:
            self.get(version)
        with self._aliases_locked():  # the event too: the log's order is the aliases' order
            aliases = self.aliases()
            if expected is not ANY_VERSION and aliases.get(name) != expected:
                raise AliasMovedError(
                    f"{name} is {aliases.get(name)} now, not {expected}: another process moved it; look again"
                )
            # the event first: a crash between the two leaves a move the log names and the aliases lack, which a
            # retried promotion completes (the alias still differs) and `mlops doctor` reports; the other order left
            # a champion no event names, that no retry logged and the doctor's repair silently undid
            self.log_event(event, version=version, alias=name, reason=reason, run_id=run_id, **details)
            aliases = {**aliases, name: version}
            if name == CHAMPION and version is not None and aliases.get(SHADOW) == version:
                # a shadow scores beside the champion, never as it: it ended, said in the log (before, it paused
                # in silence and scored again once the champion moved on)
                self.log_event(
                    "shadow_cleared",
                    version=None,
                    alias=SHADOW,
                    reason=f"{version}, the shadow, became the champion ({event})",
                    run_id=run_id,
                )
                aliases[SHADOW] = None
            write_atomic(self.aliases_path, json.dumps(aliases, indent=1, sort_keys=True).encode())

    @contextmanager
    def _aliases_locked(self) -> Iterator[None]:
        """The aliases' read-modify-write, one at a time: across threads (two steps of a run, threaded executor) and
        across processes (`mlops rollback` by hand while the daemon's rollback sensor or a run's promotion moves
        another alias), so that neither move is lost."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _ALIASES_LOCK, open(self.root / "aliases.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    @contextmanager
    def _events_locked(self) -> Iterator[None]:
        """Appends to the event log and its rewrite by ``repair`` one at a time, across threads and processes: a
        repair that rewrote the log while a run appended lost the append. Taken after the aliases' lock, never
        before it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _EVENTS_LOCK, open(self.root / "events.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def log_event(
        self, event: str, version: str | None, reason: str, run_id: str | None = None, **details: Any
    ) -> None:
        """Append one event as a line of its own and flush it to disk. A log whose last line was cut short (a crash,
        a full disk, a hand edit) gets the new event on a new line: glued to the fragment, it was set aside with it."""
        entry = {"time": _now(), "event": event, "version": version, "reason": reason, "run_id": run_id, **details}
        line = json.dumps(entry, default=str)
        with self._events_locked(), open(self.events_path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = "\n" + line
            handle.write((line + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def events(self, limit: int | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        lines = [line for line in self.events_path.read_text(errors="replace").splitlines() if line.strip()]
        chosen = lines[-limit:] if limit else lines
        events = []
        for number, line in enumerate(chosen, start=len(lines) - len(chosen) + 1):
            try:
                event = json.loads(line)
            except json.JSONDecodeError as error:
                raise RegistryDamaged(
                    f"{self.events_path} line {number} is not valid JSON ({error}): `mlops doctor --model "
                    f"{self.root.name} --repair` sets damaged lines aside in events.damaged.jsonl"
                ) from None
            problem = _event_problem(event)
            if problem:
                raise RegistryDamaged(
                    f"{self.events_path} line {number} is not an event ({problem}): {_repair_hint(self.root)}"
                )
            events.append(event)
        return events

    def previous_champions(self) -> list[str]:
        """Versions that were champion, most recent first (the candidates of a rollback)."""
        seen: list[str] = []
        for event in reversed(self.events()):
            moved = event.get("alias") == CHAMPION and event.get("event") in CHAMPION_MOVES
            if moved and event["version"] and event["version"] not in seen:
                seen.append(event["version"])
        return seen


#: What every event line holds (``log_event`` writes them all): a line without one cannot be read for what it says.
EVENT_FIELDS = ("time", "event", "version", "reason")


def _event_problem(event: Any) -> str | None:
    """Why a parsed line is not an event (None: it is one)."""
    if not isinstance(event, dict):
        return "not a JSON object"
    missing = [name for name in EVENT_FIELDS if name not in event]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(event["event"], str) or not (event["version"] is None or isinstance(event["version"], str)):
        return "event or version of the wrong type"
    return None


def gated_champions(registry: Registry) -> list[str]:
    """Versions that became champion through the promotion gates, most recent first (safe to return to)."""
    seen: list[str] = []
    for event in reversed(registry.events()):
        promoted = event.get("alias") == CHAMPION and event.get("event") == "promoted"
        if promoted and event["version"] and event["version"] not in seen:
            seen.append(event["version"])
    return seen


def rollback_targets(registry: Registry) -> list[str]:
    """The gated champions, most recent first, less every version a rollback took out of service (automatically or
    by hand): a rollback never hands the champion back to a model that was rolled back for its live quality."""
    taken_out = rolled_back_from(registry)
    return [v for v in gated_champions(registry) if v not in taken_out]


def rolled_back_from(registry: Registry) -> set[str]:
    """The versions a rollback took out of service (events before ``from_version`` was recorded name it in their
    reason, "... (from v0003)") and nobody put back since: a version made champion again afterwards (a rollback by
    hand to it, a promotion) is in service again. Before, a person trying another version and then restoring the
    good one left the good one out for ever: no rollback could return to it, nor the rollback sensor."""
    taken_out: set[str] = set()
    for event in registry.events():
        if named := _taken_out_by(event):
            taken_out.add(named)
        if event.get("alias") == CHAMPION and event.get("event") in CHAMPION_MOVES and event.get("version"):
            taken_out.discard(event["version"])
    return taken_out


def _taken_out_by(event: dict[str, Any]) -> str | None:
    """The version a ``rolled_back`` event took out of service (None for any other event)."""
    if event.get("event") != "rolled_back":
        return None
    older = _FROM_IN_REASON.search(str(event.get("reason") or ""))
    named = event.get("from_version") or (older.group(1) if older else None)
    return str(named) if named else None


_FROM_IN_REASON = re.compile(r"\(from (v\d{4,})\)$")


def evaluated_roc_auc(registry: Registry, version: str) -> float | None:
    """The ROC AUC ``version`` had on its own test month when it passed the promotion gates, as its promotion
    recorded it; for a version never promoted (or promoted before promotions recorded it), its latest evaluation's
    (None: never evaluated, or undefined on that month). A champion evaluated again later, on a newer month, keeps the
    AUC it was promoted on: the bar the rollback rule holds it to does not move with its own decline."""
    for event in reversed(registry.events()):
        promoted = event.get("event") == "promoted" and event.get("alias") == CHAMPION
        if promoted and event.get("version") == version and "roc_auc" in event:
            return event["roc_auc"]
    result = registry.evaluation(version)
    return result.metrics["challenger"]["roc_auc"] if result is not None else None


class IncompatibleFeaturesError(ValueError):
    """A version trained on another feature set than the one the features are built with now: the online store no
    longer computes its features as it learnt them (a column may be missing, or mean something else)."""


def check_feature_set(registry: Registry, version: str, feature_set: str | None) -> None:
    """Raise :class:`IncompatibleFeaturesError` when ``version`` was trained on another feature set than
    ``feature_set`` (None: not checked; a version whose record names none is not refused)."""
    trained_on = registry.get(version).metadata.get("feature_set_version")
    if feature_set is not None and trained_on is not None and trained_on != feature_set:
        raise IncompatibleFeaturesError(
            f"{version} was trained on feature set {trained_on}, the features are now {feature_set}: it would be fed "
            "features it never learnt; retrain instead (`make pipeline`)"
        )


def rollback(
    registry: Registry,
    reason: str,
    to: str | None = None,
    run_id: str | None = None,
    feature_set: str | None = None,
) -> str:
    """Move the champion back to ``to`` or, by default, to the champion before the current one that no rollback took
    out of service (rolling back twice goes further back, not to and fro); log ``rolled_back``. With
    ``feature_set`` (the features' version now), a version trained on another one is never the target.

    Returns the new champion. Raises ``ValueError`` when there is nothing to roll back to.
    """
    current = registry.alias(CHAMPION)
    if to is None:
        taken_out = rolled_back_from(registry)
        earlier = [v for v in registry.previous_champions() if v != current and v not in taken_out]
        if feature_set is not None and earlier:
            compatible = [v for v in earlier if not _trained_on_other_features(registry, v, feature_set)]
            if not compatible:
                raise IncompatibleFeaturesError(
                    f"every earlier champion ({', '.join(earlier)}) was trained on another feature set than today's "
                    f"{feature_set}: each would be fed features it never learnt; retrain instead (`make pipeline`)"
                )
            earlier = compatible
        if not earlier:
            if current is None:
                raise ValueError("no champion yet, nothing to roll back: run `make pipeline` first")
            raise ValueError(
                f"no earlier champion to roll back to (current: {current}; rolled back before: "
                f"{', '.join(sorted(taken_out)) or 'none'}); name one with --to"
            )
        sound = [v for v in earlier if _is_sound(registry, v)]  # a damaged one is passed over, as the sensor does
        if not sound:
            raise RegistryIntegrityError(
                f"every earlier champion fails its checksum or is missing ({', '.join(earlier)}): `mlops doctor` "
                "says which file; name another version with --to, or retrain (`make pipeline`)"
            )
        to = sound[0]
    if to == current:
        raise ValueError(f"{to} is already the champion")
    try:
        served = registry.previous_champions()
    except RegistryDamaged:  # a damaged log cannot tell: a person rolling back while it is damaged is not refused
        served = [to]
    if to not in served:
        raise ValueError(
            f"{to} was never champion: a rollback returns to an earlier champion. To serve a version that never "
            f"served, `mlops promote --model {registry.root.name} --to {to}` (the gates bypassed, logged)"
        )
    check_feature_set(registry, to, feature_set)
    registry.model_text(to)  # refuse a damaged target before it serves
    registry.set_alias(
        CHAMPION, to, "rolled_back", f"{reason} (from {current})", run_id=run_id, expected=current, from_version=current
    )
    return to


def promote_by_hand(registry: Registry, to: str, reason: str, feature_set: str | None = None) -> str | None:
    """Make ``to`` the champion by a person's decision, the promotion gates bypassed; returns the champion it replaced.

    Logged as ``promoted_by_hand`` (never ``promoted``: the rollback sensor returns only to versions the gates
    promoted), naming the replaced champion, which stays in service as a rollback target: nothing was found wrong
    with it (`mlops rollback` undoes the trial, taking ``to`` out). Refuses the current champion, a version that
    fails its checksum, and one trained on another feature set than ``feature_set``."""
    current = registry.alias(CHAMPION)
    if to == current:
        raise ValueError(f"{to} is already the champion")
    check_feature_set(registry, to, feature_set)
    registry.model_text(to)  # refuse a damaged version before it serves
    registry.events()  # a damaged event log (RegistryDamaged) refuses before the alias moves, as a rollback does
    said = f"{reason} (from {current})" if current else f"{reason} (no champion before)"
    registry.set_alias(CHAMPION, to, PROMOTED_BY_HAND, said, expected=current, from_version=current)
    return current


def set_shadow(registry: Registry, to: str | None, reason: str) -> None:
    """Point the ``shadow`` alias at ``to`` (None: no shadow), logged, so `mlops doctor --repair` rebuilds it from
    the event log like the other aliases (a shadow set by editing aliases.json was dropped by a repair)."""
    if to is not None:
        registry.model_text(to)  # a damaged version would score nothing
        if to == registry.alias(CHAMPION):
            raise ValueError(f"{to} is the champion: a shadow scores beside it, so it is another version")
    if to == registry.alias(SHADOW):
        raise ValueError(f"the shadow is {to or 'unset'} already")
    registry.set_alias(SHADOW, to, "shadow_set" if to else "shadow_cleared", reason)


def gate_verdict(registry: Registry, version: str) -> tuple[str, str] | None:
    """The promotion gates' last word on ``version``: ("promoted" or "rejected", their reason); None: never judged."""
    for event in reversed(registry.events()):
        if event.get("version") == version and event.get("event") in ("promoted", "rejected"):
            return event["event"], str(event.get("reason"))
    return None


def _trained_on_other_features(registry: Registry, version: str, feature_set: str) -> bool:
    try:
        check_feature_set(registry, version, feature_set)
    except IncompatibleFeaturesError:
        return True
    except (UnknownVersionError, RegistryIntegrityError, OSError, ValueError):
        return False  # judged where it is used (a missing or damaged version is passed over there)
    return False


def _is_sound(registry: Registry, version: str) -> bool:
    """Whether ``version``'s model is there and passes its checksum."""
    try:
        registry.model_text(version)
    except (RegistryIntegrityError, UnknownVersionError, OSError, ValueError):
        return False
    return True


def comparable_champion(registry: Registry, feature_set: str) -> tuple[str | None, str | None]:
    """The champion a challenger is judged against, and why there is none to judge against when the alias names
    one: a champion trained on another feature set than today's cannot score today's rows (a column gone, or meaning
    something else), so after a change of the feature SQL the challenger is judged as a first model (against the
    base rate) and may replace it. Before, every evaluation failed on the missing column until a rollback by hand."""
    champion = registry.alias(CHAMPION)
    if champion is None:
        return None, None
    try:
        check_feature_set(registry, champion, feature_set)
    except IncompatibleFeaturesError as error:
        return None, f"champion {champion} is not compared: {error}"
    return champion, None


def rollback_candidate(registry: Registry, champion: str, feature_set: str | None = None) -> str | None:
    """The version a rollback of ``champion`` would go to now, moving nothing: the first of its
    :func:`rollback_targets` that passes its checksum and, given ``feature_set``, was trained on it (what
    :func:`rollback_to_first_sound` would pick). None when there is none."""
    for version in rollback_targets(registry):
        other_features = feature_set is not None and _trained_on_other_features(registry, version, feature_set)
        if version != champion and not other_features and _is_sound(registry, version):
            return version
    return None


def rollback_to_first_sound(
    registry: Registry, reason: str, targets: list[str], run_id: str | None = None, feature_set: str | None = None
) -> tuple[str | None, list[str]]:
    """Roll back to the first of ``targets`` whose model passes its checksum and, given ``feature_set``, was trained
    on it (a damaged or incompatible one is passed over, not left to stop every later rollback); return the new
    champion (None: no target was fit) and the ones passed over, each with why."""
    passed_over: list[str] = []
    for version in targets:
        try:
            return rollback(registry, reason, to=version, run_id=run_id, feature_set=feature_set), passed_over
        except (RegistryIntegrityError, UnknownVersionError, IncompatibleFeaturesError) as error:
            passed_over.append(f"{version} ({error})")
    return None, passed_over


@dataclass(frozen=True)
class Finding:
    """One thing `mlops doctor` checked: what, whether it is sound, and why not."""

    what: str
    ok: bool
    detail: str = ""


def examine(registry: Registry) -> list[Finding]:
    """Check every version's files and checksum, the aliases and the event log; never raises."""
    findings = []
    for version in registry.versions():
        try:
            registry.model_text(version)
            json.loads((registry.versions_dir / version / "profile.json").read_text())
            findings.append(Finding(f"version {version}", True, "model matches its checksum"))
        except (RegistryIntegrityError, OSError, ValueError) as error:
            findings.append(Finding(f"version {version}", False, str(error)))
        try:
            registry.evaluation(version)
        except (RecordError, OSError, UnicodeDecodeError) as error:  # RecordError: a ValueError of its own
            findings.append(
                Finding(
                    f"evaluation of {version}",
                    False,
                    f"{error}: promotion, rollback and A/B cannot read it. Restore the file, or remove it and "
                    f"evaluate {version} again (materialize {registry.root.name}/evaluation while it is the "
                    "challenger)",
                )
            )
    try:
        aliases = registry.aliases()
        missing = {a: v for a, v in aliases.items() if v is not None and v not in registry.versions()}
        detail = (
            f"names unknown versions {missing}" if missing else ", ".join(f"{a} -> {v}" for a, v in aliases.items())
        )
        findings.append(Finding("aliases.json", not missing, detail or "no aliases yet"))
    except RegistryDamaged as error:
        findings.append(Finding("aliases.json", False, str(error)))
        aliases = None
    try:
        logged = logged_aliases(registry) if aliases is not None else {}
    except RegistryDamaged:
        logged = {}  # a damaged event log is its own finding, below
    if aliases is not None:
        # every alias either file names: a move cut short between its event and the aliases (the file lacks an
        # alias the log set), or a hand edit of either file
        differ = sorted(a for a in set(aliases) | set(logged) if aliases.get(a) != logged.get(a, aliases.get(a)))
        if differ:
            said = "; ".join(
                f"{a} is {aliases.get(a) or 'absent'} but the event log's last move named {logged[a] or 'none'}"
                for a in differ
            )
            findings.append(Finding("aliases.json vs events.jsonl", False, f"{said}: {_repair_hint(registry.root)}"))
    repair_command = f"`mlops doctor --model {registry.root.name} --repair`"
    unregistered = _unregistered_versions(registry)
    if unregistered:
        findings.append(
            Finding(
                "versions vs events.jsonl",
                False,
                f"no `registered` event names {', '.join(unregistered)} (a registration cut short after storing the "
                f"version): {repair_command} logs it",
            )
        )
    leftovers = registry.staging_leftovers()
    if leftovers:
        findings.append(
            Finding(
                "unfinished writes",
                False,
                f"{len(leftovers)} left by writes that never finished (a crash), "
                f"{', '.join(str(p.relative_to(registry.root)) for p in leftovers)}: {repair_command} removes them",
            )
        )
    try:
        findings.append(Finding("events.jsonl", True, f"{len(registry.events())} events"))
    except RegistryDamaged as error:
        findings.append(Finding("events.jsonl", False, str(error)))
    return findings


def _unregistered_versions(registry: Registry) -> list[str]:
    """Stored versions no ``registered`` event names (none when the event log cannot be read: its own finding)."""
    try:
        logged = _versions_named(registry.events(), "registered")
    except RegistryDamaged:
        return []
    return [version for version in registry.versions() if version not in logged]


def repair(registry: Registry) -> list[str]:
    """Set damaged event lines aside (``events.damaged.jsonl``, nothing is lost) and rebuild ``aliases.json`` from the
    event log: each alias gets the version its last alias event named, skipping versions that fail their checksum
    (and, for the champion, versions a rollback took out of service). Holds the aliases' lock throughout. Returns
    what was done."""
    with registry._aliases_locked():  # no alias move (a promotion, the rollback sensor) lands between read and write
        return _repair_locked(registry)


def logged_aliases(registry: Registry) -> dict[str, str | None]:
    """Each alias as the event log's last move of it named it."""
    return {event["alias"]: event.get("version") for event in registry.events() if event.get("alias")}


def _repair_locked(registry: Registry) -> list[str]:
    done: list[str] = []
    if registry.events_path.exists():
        with registry._events_locked():  # no event appended between the read and the rewrite is lost
            good, bad = [], []
            for line in registry.events_path.read_text(errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    (bad if _event_problem(event) else good).append(line)
                except json.JSONDecodeError:
                    bad.append(line)
            if bad:
                with open(registry.root / "events.damaged.jsonl", "a", encoding="utf-8") as handle:
                    handle.write("".join(line + "\n" for line in bad))
                write_atomic(registry.events_path, "".join(line + "\n" for line in good).encode())
                done.append(f"set {len(bad)} damaged event line(s) aside in events.damaged.jsonl")
    for version in _unregistered_versions(registry):
        registry.log_event(
            "registered",
            version=version,
            run_id=_stored_run_id(registry, version),
            reason="found in versions/ without its event (a registration cut short): logged by mlops doctor --repair",
        )
        done.append(f"logged the registration of {version}, which no event named")
    for path in registry.staging_leftovers():
        _remove(path)
        done.append(f"removed {path.relative_to(registry.root)}, left by a write that never finished")
    sound = {version for version in registry.versions() if _is_sound(registry, version)}
    # from the newest event back: each alias gets the newest version it named that is sound and, for the champion,
    # that no rollback took out after that move (a version a person brought back with `mlops rollback --to` counts
    # from then on)
    rebuilt: dict[str, str | None] = {}
    taken_out_later: set[str] = set()
    for event in reversed(registry.events()):
        alias, version = event.get("alias"), event.get("version")
        taken_out = alias == CHAMPION and version in taken_out_later
        if alias and alias not in rebuilt and (version is None or (version in sound and not taken_out)):
            rebuilt[alias] = version
        if named := _taken_out_by(event):
            taken_out_later.add(named)
    rebuilt = {alias: version for alias, version in sorted(rebuilt.items()) if version is not None}  # cleared: absent
    if rebuilt.get(SHADOW) is not None and rebuilt.get(SHADOW) == rebuilt.get(CHAMPION):
        # the shadow became the champion in the rebuild (the champion's version damaged, the shadow the one before):
        # it is a shadow no more, as when a move makes it champion (`set_alias`)
        done.append(f"{rebuilt.pop(SHADOW)}, the shadow, is the champion now: no shadow")
    try:
        current = {alias: version for alias, version in registry.aliases().items() if version is not None}
    except RegistryDamaged:
        current = None
    if current != rebuilt:
        registry.root.mkdir(parents=True, exist_ok=True)
        # one event per alias moved, naming it: the event log's last word on each alias is what the aliases say
        for alias in sorted({*(current or {}), *rebuilt}):
            if (current or {}).get(alias) != rebuilt.get(alias):
                registry.log_event(
                    "repaired",
                    version=rebuilt.get(alias),
                    alias=alias,
                    reason=f"aliases rebuilt from the event log: {rebuilt}",
                )
        write_atomic(registry.aliases_path, json.dumps(rebuilt, indent=1, sort_keys=True).encode())
        done.append(f"rebuilt aliases.json from the event log: {rebuilt}")
    if current and current.get(CHAMPION) and not rebuilt.get(CHAMPION):
        done.append(
            "no sound champion left that no rollback took out of service: retrain (`make pipeline`) or name one "
            "with `mlops rollback --to V`"
        )
    return done


def _versions_named(events: list[dict[str, Any]], event: str) -> set[str]:
    return {e["version"] for e in events if e["event"] == event and e.get("version")}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _stored_run_id(registry: Registry, version: str) -> str | None:
    try:
        return registry.get(version).metadata.get("run_id")
    except RegistryIntegrityError:
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
