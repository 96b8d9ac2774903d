"""The replayed feed: idempotent, atomic, checksummed; misnamed files reported with the reason; and the refresh plan
the landing sensor follows."""

import os
from pathlib import Path

import pytest

from mlops_assets.core.landing import (
    LandedFile,
    checksum_path,
    find_landed,
    land_file,
    landed_months,
    misnamed_files,
    month_range,
    plan_refresh,
    recorded_checksum,
    scan_landing,
    sha256_file,
    shift_month,
    write_atomic,
)
from mlops_assets.feeds.nycflights13 import replay_months


def test_replay_lands_months_and_reference_files_with_checksums(tmp_path: Path) -> None:
    results = replay_months(tmp_path, ["2013-01", "2013-02"], every=50)
    names = sorted(landed.relative_name for landed, _ in results)
    assert names == [
        "flights/2013-01.parquet",
        "flights/2013-02.parquet",
        "reference/airlines.parquet",
        "reference/airports.parquet",
        "reference/planes.parquet",
        "weather/2013-01.parquet",
        "weather/2013-02.parquet",
    ]
    for landed, status in results:
        assert status == "landed"
        assert landed.sha256 == sha256_file(landed.path)
        sidecar = landed.path.with_name(landed.path.name + ".sha256").read_text()
        assert sidecar == f"{landed.sha256}  {landed.path.name}\n"
    assert landed_months(tmp_path) == ["2013-01", "2013-02"]


def test_replaying_twice_changes_nothing(tmp_path: Path) -> None:
    replay_months(tmp_path, ["2013-01"], every=50)
    before = {f.path: (f.sha256, f.path.stat().st_mtime_ns) for f in scan_landing(tmp_path)}
    again = replay_months(tmp_path, ["2013-01"], every=50)
    assert {status for _, status in again} == {"unchanged"}
    assert {f.path: (f.sha256, f.path.stat().st_mtime_ns) for f in scan_landing(tmp_path)} == before


def test_changed_bytes_replace_the_file(tmp_path: Path) -> None:
    replay_months(tmp_path, ["2013-01"], every=50)
    results = replay_months(tmp_path, ["2013-01"], every=40)  # a different slice: different bytes
    statuses = {landed.relative_name: status for landed, status in results}
    assert statuses["flights/2013-01.parquet"] == "replaced"
    assert statuses["weather/2013-01.parquet"] == "unchanged"


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landed, _ = land_file(tmp_path, "flights", "2013-01", b"old bytes")

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(landed.path, b"new bytes that never fully land")
    assert landed.path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in landed.path.parent.iterdir()) == ["2013-01.parquet", "2013-01.parquet.sha256"]


def test_months_outside_the_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="covers 2013-01..2013-12"):
        replay_months(tmp_path, ["2014-01"])
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_range("2013-1", "2013-03")
    assert month_range("2012-11", "2013-02") == ["2012-11", "2012-12", "2013-01", "2013-02"]
    assert shift_month("2013-01", -2) == "2012-11"


def _files(**hashes: str) -> list[LandedFile]:
    files = []
    for name, sha in hashes.items():
        table, _, month = name.partition("_")
        month = month.replace("_", "-")
        path = Path(f"{table}/{month}.parquet") if month else Path(f"reference/{table}.parquet")
        files.append(LandedFile(table, month or None, path, sha))
    return files


MONTHLY, REFERENCE = ["flights", "weather"], ["planes"]


def test_refresh_plan_requests_new_months_once() -> None:
    files = _files(planes="p1", flights_2013_01="f1", weather_2013_01="w1")
    plan = plan_refresh(files, MONTHLY, REFERENCE, cursor={})
    assert plan.months_to_run == ["2013-01"]
    again = plan_refresh(files, MONTHLY, REFERENCE, cursor=plan.cursor)
    assert again.months_to_run == [] and again.cursor == plan.cursor


def test_refresh_plan_reruns_a_changed_month_with_a_new_run_key() -> None:
    first = plan_refresh(_files(planes="p1", flights_2013_01="f1", weather_2013_01="w1"), MONTHLY, REFERENCE, {})
    changed = plan_refresh(
        _files(planes="p1", flights_2013_01="f2", weather_2013_01="w1"), MONTHLY, REFERENCE, first.cursor
    )
    assert changed.months_to_run == ["2013-01"]
    assert changed.run_keys["2013-01"] != first.run_keys["2013-01"]


def test_refresh_plan_reruns_every_month_when_reference_data_changes() -> None:
    files = _files(planes="p1", flights_2013_01="f1", weather_2013_01="w1", flights_2013_02="f2", weather_2013_02="w2")
    first = plan_refresh(files, MONTHLY, REFERENCE, {})
    files[0] = LandedFile("planes", None, Path("reference/planes.parquet"), "p2")
    assert plan_refresh(files, MONTHLY, REFERENCE, first.cursor).months_to_run == ["2013-01", "2013-02"]


def test_refresh_plan_waits_for_a_complete_month() -> None:
    plan = plan_refresh(_files(planes="p1", flights_2013_01="f1"), MONTHLY, REFERENCE, {})
    assert plan.months_to_run == [] and plan.waiting == ["2013-01"]
    assert "flights/2013-01.parquet" not in plan.cursor  # not consumed: it is requested once weather lands


def test_reference_files_landed_before_any_complete_month_are_carried_by_its_first_run() -> None:
    """The reference files land first (as the replay lands them), then January's flights, then its weather: January's
    run must ingest the reference tables. Recorded as seen while no month was ready, they never were: every month's
    run then failed on the missing reference tables."""
    waiting = plan_refresh(_files(planes="p1", flights_2013_01="f1"), MONTHLY, REFERENCE, {})
    assert waiting.months_to_run == [] and "reference/planes.parquet" not in waiting.cursor
    ready = plan_refresh(
        _files(planes="p1", flights_2013_01="f1", weather_2013_01="w1"), MONTHLY, REFERENCE, waiting.cursor
    )
    assert ready.months_to_run == ["2013-01"] and ready.reference_changed
    assert ready.cursor["reference/planes.parquet"] == "p1"
    again = plan_refresh(
        _files(planes="p1", flights_2013_01="f1", weather_2013_01="w1"), MONTHLY, REFERENCE, ready.cursor
    )
    assert again.months_to_run == [] and not again.reference_changed


def test_a_correction_withdrawn_is_a_new_run(tmp_path: Path) -> None:
    """January lands (A), is corrected (B), then the correction is withdrawn (A again): the third landing is a run of
    its own. Its run key must differ from A's first, which Dagster already used (a run key is requested once)."""
    replay_months(tmp_path, ["2013-01"], every=50)
    monthly, reference = ["flights", "weather"], ["planes", "airports", "airlines"]
    path = tmp_path / "flights" / "2013-01.parquet"
    first_bytes, first_written = path.read_bytes(), path.stat().st_mtime_ns
    first = plan_refresh(scan_landing(tmp_path), monthly, reference, {})
    land_file(tmp_path, "flights", "2013-01", first_bytes[:-8] + b"PAR1" * 2)  # any other bytes: B
    corrected = plan_refresh(scan_landing(tmp_path), monthly, reference, first.cursor)
    land_file(tmp_path, "flights", "2013-01", first_bytes)
    # written later than the first time (here within milliseconds, which a coarse file clock may not tell apart)
    for written in (path, checksum_path(path)):
        os.utime(written, ns=(first_written + 10**9, first_written + 10**9))
    restored = plan_refresh(scan_landing(tmp_path), monthly, reference, corrected.cursor)
    assert restored.months_to_run == ["2013-01"] and restored.cursor == first.cursor
    keys = [plan.run_keys["2013-01"] for plan in (first, corrected, restored)]
    assert len(set(keys)) == 3, keys


def test_a_batch_is_requested_again_when_only_its_checksum_file_is_fixed(tmp_path: Path) -> None:
    """Rejected for a missing (or wrong) checksum file, a month is refreshed again once the file is right, the bytes
    unchanged; and a checksum file that lands after its batch (``land_file`` writes the batch first) is no loss."""
    replay_months(tmp_path, ["2013-01"], every=50)
    sidecar = checksum_path(tmp_path / "flights" / "2013-01.parquet")
    good = sidecar.read_text()
    sidecar.unlink()
    monthly, reference = ["flights", "weather"], ["planes", "airports", "airlines"]
    missing = plan_refresh(scan_landing(tmp_path), monthly, reference, {})
    assert missing.months_to_run == ["2013-01"]
    assert missing.cursor["flights/2013-01.parquet"].endswith(":unverified:no checksum file")
    assert plan_refresh(scan_landing(tmp_path), monthly, reference, missing.cursor).months_to_run == []
    sidecar.write_text("0" * 64 + "  2013-01.parquet\n")  # a wrong one: another version again
    wrong = plan_refresh(scan_landing(tmp_path), monthly, reference, missing.cursor)
    assert wrong.months_to_run == ["2013-01"] and wrong.run_keys != missing.run_keys
    sidecar.write_text(good)
    fixed = plan_refresh(scan_landing(tmp_path), monthly, reference, wrong.cursor)
    assert fixed.months_to_run == ["2013-01"] and fixed.run_keys["2013-01"] not in (
        missing.run_keys["2013-01"],
        wrong.run_keys["2013-01"],
    )
    assert fixed.cursor["flights/2013-01.parquet"] == sha256_file(tmp_path / "flights" / "2013-01.parquet")


TABLES = ["flights", "weather", "planes", "airports", "airlines"]


def test_misnamed_files_are_listed_with_the_reason_and_never_taken_as_batches(tmp_path: Path) -> None:
    replay_months(tmp_path, ["2013-01"], every=50)
    data = (tmp_path / "flights" / "2013-01.parquet").read_bytes()
    misnamed = {
        "flights/2013-05 .parquet": "'2013-05 ' has white space; expected flights/<YYYY-MM>.parquet",
        "flights/2013-05.PARQUET": "the extension '.PARQUET' must be '.parquet' in lower case",
        "flights/2013-05.csv": "not a parquet file (extension '.csv')",
        "flights/..%2F..%2F2013-05.parquet": "looks like an encoded path",
        "flights/2013-5.parquet": "'2013-5' is not a month of the form YYYY-MM",
        "flights/2013-13.parquet": "'2013-13' is not a month of the form YYYY-MM",
        "flights/.2013-05.parquet": "a hidden file",
        "flights/2013-06.parquet.sha256": "a checksum file without its batch 2013-06.parquet",
        "reference/Planes.parquet": "'Planes' is not a table name",
        "reference/routes.parquet": "'routes' is not a table of any feed",
        "2013-05.parquet": "a file outside any table folder",
        "Flights": "folder 'Flights' is not a table name",
        "routes": "folder 'routes' is not a table of any feed",
        "flights/2013-04.parquet": "a folder named like a batch inside flights/ (a dataset written as a folder of parts?)",
    }
    for name in misnamed:
        path = tmp_path / name
        if name in ("Flights", "routes", "flights/2013-04.parquet"):
            path.mkdir()
            (path / "2013-05.parquet").write_bytes(data)
        else:
            path.write_bytes(data)
    # a write in flight (write_atomic's temporary file) is not a landed file, nor a misnamed one
    (tmp_path / "flights" / ".2013-02.parquet.abc123.tmp").write_bytes(data)

    found = {m.relative_name: m for m in misnamed_files(tmp_path, TABLES)}
    assert sorted(found) == sorted(misnamed)
    for name, reason in misnamed.items():
        assert reason in found[name].reason, (name, found[name].reason)
    assert found["flights/2013-05.csv"].table == "flights" and found["reference/Planes.parquet"].table == "planes"
    assert found["2013-05.parquet"].table is None
    # none of them is a batch: the months and the files the sensor hashes are the well-named ones only
    assert landed_months(tmp_path, ["flights", "weather"]) == ["2013-01"]
    assert find_landed(tmp_path, "flights", "2013-04") is None  # the folder named like a batch is not read as one
    assert {f.relative_name for f in scan_landing(tmp_path) if f.month and f.table in TABLES} == {
        "flights/2013-01.parquet",
        "weather/2013-01.parquet",
    }


def test_a_clean_landing_zone_has_no_misnamed_file(tmp_path: Path) -> None:
    replay_months(tmp_path, ["2013-01", "2013-02"], every=50)
    assert misnamed_files(tmp_path, TABLES) == []


def test_the_checksum_file_records_the_landed_bytes(tmp_path: Path) -> None:
    landed, _ = land_file(tmp_path, "flights", "2013-01", b"some bytes")
    assert recorded_checksum(landed.path) == landed.sha256
    # BSD's form, as `sha256sum --tag` and `openssl dgst -sha256` write it (it was always a mismatch)
    checksum_path(landed.path).write_text(f"SHA256 (2013-01.parquet) = {landed.sha256}\n")
    assert recorded_checksum(landed.path) == landed.sha256
    checksum_path(landed.path).write_text(f"SHA2-256(2013-01.parquet)= {landed.sha256.upper()}\n")
    assert recorded_checksum(landed.path) == landed.sha256
    checksum_path(landed.path).write_text("not-a-digest  2013-01.parquet\n")
    assert recorded_checksum(landed.path) == "not-a-digest"  # shown as found, so the comparison fails
    checksum_path(landed.path).unlink()
    assert recorded_checksum(landed.path) is None


def test_landing_the_same_bytes_again_restores_a_missing_or_wrong_checksum_file(tmp_path: Path) -> None:
    """A batch rejected for its checksum file is fixed by landing it again, as the rejection says, even when the bytes
    are the ones already there."""
    landed, _ = land_file(tmp_path, "flights", "2013-01", b"some bytes")
    checksum_path(landed.path).unlink()
    again, status = land_file(tmp_path, "flights", "2013-01", b"some bytes")
    assert status == "unchanged" and recorded_checksum(again.path) == landed.sha256
    checksum_path(landed.path).write_text("0" * 64 + "  2013-01.parquet\n")
    land_file(tmp_path, "flights", "2013-01", b"some bytes")
    assert recorded_checksum(landed.path) == landed.sha256
    written = checksum_path(landed.path).stat().st_mtime_ns
    land_file(tmp_path, "flights", "2013-01", b"some bytes")  # a sound checksum file is left as it is
    assert checksum_path(landed.path).stat().st_mtime_ns == written
