"""The command line as a person meets it: a damaged registry file gives one line naming the file and the repair
(`mlops doctor`), a version failing its checksum is flagged, and wrong arguments get a clear error, not a traceback."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.cli import command_table, main
from mlops_assets.core.landing import land_file
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.feeds.nycflights13 import replay_months


def _registry_with_history(settings: Settings) -> Registry:
    """flight_delay's registry with two versions: v0001 promoted, then v0002 promoted."""
    registry = Registry(settings.model("flight_delay").registry_dir)
    for text in ("tree one", "tree two"):
        version = registry.register(text, {"data": {"test_month": "2013-03"}}, {}, run_id=None).version
        registry.set_alias(CHAMPION, version, "promoted", "test")
    return registry


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_damaged_aliases_file_names_itself_and_the_repair(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = _registry_with_history(settings)
    registry.aliases_path.write_text('{"champion": "v00')  # a hand edit gone wrong
    for command in (["status"], ["rollback"], ["models"], ["runs"]):
        assert main(command) == 1
        line = _error_line(capsys)
        assert str(registry.aliases_path) in line and "mlops doctor --model flight_delay --repair" in line
    assert main(["doctor", "--model", "flight_delay"]) == 1
    assert "FAIL aliases.json" in capsys.readouterr().out
    # the repair rebuilds the aliases from the event log: the last promotion named v0002
    assert main(["doctor", "--model", "flight_delay", "--repair"]) == 0
    assert registry.alias(CHAMPION) == "v0002"
    assert main(["status", "--model", "flight_delay"]) == 0


def test_a_damaged_event_log_is_set_aside_not_lost(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    registry = _registry_with_history(settings)
    with open(registry.events_path, "a") as log:
        log.write("not json at all\n")
    assert main(["rollback", "--model", "flight_delay"]) == 1
    line = _error_line(capsys)
    assert str(registry.events_path) in line and "line 5" in line and "mlops doctor" in line
    assert main(["doctor", "--repair"]) == 0
    assert (registry.root / "events.damaged.jsonl").read_text() == "not json at all\n"
    assert main(["rollback", "--model", "flight_delay"]) == 0 and registry.alias(CHAMPION) == "v0001"


def test_status_flags_a_version_failing_its_checksum(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    registry = _registry_with_history(settings)
    (registry.versions_dir / "v0002" / "model.txt").write_text("tampered")
    assert main(["status", "--model", "flight_delay"]) == 0
    assert "WARNING: v0002 fail(s) the checksum (never loaded); named by champion" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)["models"]["flight_delay"]["registry"]["versions"]
    assert [v["checksum_ok"] for v in versions] == [True, False]
    assert main(["doctor", "--model", "flight_delay"]) == 1
    assert "FAIL version v0002" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    [delay] = [m for m in json.loads(capsys.readouterr().out)["models"] if m["name"] == "flight_delay"]
    assert delay["champion"] == "v0002" and delay["champion_checksum_ok"] is False


def test_an_alias_naming_a_missing_version_or_a_damaged_metadata_file_is_flagged_not_a_traceback(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = _registry_with_history(settings)
    registry.aliases_path.write_text('{"champion": "v0042", "challenger": "v0002"}')  # a version that never was
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "v0042 (missing)" in out and "Traceback" not in out
    header, row = out.splitlines()[0], next(line for line in out.splitlines() if line.startswith("flight_delay"))
    assert row.index("v0042 (missing)") + len("v0042 (missing)") < header.index("test month")  # its own column
    assert main(["status", "--model", "flight_delay"]) == 0
    warning = "WARNING: aliases name versions that do not exist (champion -> v0042): `mlops doctor --model flight_delay"
    assert warning in capsys.readouterr().out
    # a version whose metadata.json was cut short: status, runs and the doctor name the file, nothing crashes
    registry.aliases_path.write_text('{"champion": "v0002"}')
    damaged = registry.versions_dir / "v0001" / "metadata.json"
    damaged.write_text('{"x":')
    assert main(["status", "--model", "flight_delay"]) == 0
    assert f"WARNING: {damaged} is not valid JSON" in capsys.readouterr().out
    assert main(["runs", "--model", "flight_delay"]) == 0
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["doctor", "--model", "flight_delay"]) == 1
    assert f"FAIL version v0001: {damaged} is not valid JSON" in capsys.readouterr().out
    assert main(["rollback", "--model", "flight_delay"]) == 1  # the only earlier champion is damaged: said in a line
    assert "every earlier champion fails its checksum or is missing" in _error_line(capsys)


@pytest.mark.parametrize(
    "damage", ["empty checksum file", "no metadata.json", "no model.txt", "evaluation not a record"]
)
def test_a_lost_or_emptied_file_of_a_version_is_named_by_every_command_never_a_traceback(
    settings: Settings, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """A bug hunt's cases: IndexError (an empty model.sha256), "no model version 'v0001'; known: v0001, v0002" (no
    metadata.json), FileNotFoundError (`rollback --to` a version without its model), and a RecordError traceback
    from `mlops models` (and so `make pipeline`) while `mlops doctor` said all was well."""
    registry = _registry_with_history(settings)
    folder = registry.versions_dir / "v0001"
    if damage == "empty checksum file":
        (folder / "model.sha256").write_text("")
    elif damage == "no metadata.json":
        (folder / "metadata.json").unlink()
    elif damage == "no model.txt":
        registry.get("v0001").model_path.unlink()
    else:
        registry.aliases_path.write_text('{"champion": "v0001"}')
        registry.evaluations_dir.mkdir(parents=True, exist_ok=True)
        (registry.evaluations_dir / "v0001.json").write_text('{"oops": 1}')
    for command in (["status"], ["runs"], ["models"]):
        assert main([*command, *(["--model", "flight_delay"] if command != ["models"] else [])]) == 0
        printed = capsys.readouterr()
        assert "Traceback" not in printed.out + printed.err
        if command == ["status"] and damage == "no metadata.json":  # said as what it is, not as a checksum failure
            assert "metadata.json is missing" in printed.out and "fail(s) the checksum" not in printed.out
    assert main(["doctor", "--model", "flight_delay"]) == 1
    doctor = capsys.readouterr().out
    if damage == "evaluation not a record":
        assert f"FAIL evaluation of v0001: {registry.evaluations_dir / 'v0001.json'}: " in doctor, doctor
        assert main(["models"]) == 0
        assert "v0001 (evaluation record damaged: `mlops doctor`)" in capsys.readouterr().out
    else:
        assert "FAIL version v0001: " in doctor, doctor
        assert main(["rollback", "--model", "flight_delay", "--to", "v0001"]) == 1
        said = _error_line(capsys)
        assert said.startswith("error: flight_delay: ") and ("v0001" in said), said
        assert registry.alias(CHAMPION) == "v0002"  # nothing moved to a damaged version


def test_promote_and_shadow_move_aliases_by_hand_with_their_events(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = _registry_with_history(settings)  # v0001 promoted, then v0002
    third = registry.register("tree three", {"data": {"test_month": "2013-03"}}, {}, run_id=None).version
    assert main(["rollback", "--model", "flight_delay", "--to", third]) == 1
    assert f"{third} was never champion" in _error_line(capsys)
    assert main(["promote", "--model", "flight_delay", "--to", third, "--reason", "a trial"]) == 0
    printed = capsys.readouterr()
    assert f"champion is now {third} (logged as promoted_by_hand: a trial)" in printed.out
    assert "`mlops rollback --model flight_delay` returns to v0002" in printed.out
    assert f"note: the promotion gates never judged {third}" in printed.err
    assert main(["rollback", "--model", "flight_delay"]) == 0 and registry.alias(CHAMPION) == "v0002"
    capsys.readouterr()
    assert main(["shadow", "--model", "flight_delay", "--to", "v0001"]) == 0
    assert "shadow is now v0001" in capsys.readouterr().out and registry.alias("shadow") == "v0001"
    assert [e["event"] for e in registry.events()][-3:] == ["promoted_by_hand", "rolled_back", "shadow_set"]
    # the shadow made champion: the shadow ends, logged and said (it paused in silence, and scored again once the
    # champion moved on)
    assert main(["promote", "--model", "flight_delay", "--to", "v0001"]) == 0
    assert registry.alias(CHAMPION) == "v0001" and registry.alias("shadow") is None
    assert [(e["event"], e.get("alias")) for e in registry.events()][-2:] == [
        ("promoted_by_hand", CHAMPION),
        ("shadow_cleared", "shadow"),
    ]
    assert "note: v0001 was flight_delay's shadow: no shadow now (logged as shadow_cleared" in capsys.readouterr().err
    assert main(["rollback", "--model", "flight_delay"]) == 0 and registry.alias("shadow") is None
    assert "shadow" not in capsys.readouterr().err  # nothing ended this time
    # a damaged event log: refused before the champion moves (it moved, then the command failed)
    with open(registry.events_path, "a") as log:
        log.write("garbage{\n")
    assert main(["promote", "--model", "flight_delay", "--to", third]) == 1
    assert "is not valid JSON" in _error_line(capsys) and registry.alias(CHAMPION) == "v0002"


def test_runs_say_which_versions_were_trained_from_uncommitted_code(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(settings.model("flight_delay").registry_dir)
    for dirty in (False, True):
        code = {"package": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": dirty}
        registry.register(f"tree {dirty}", {"code_version": code, "data": {"test_month": "2013-03"}}, {}, run_id=None)
    assert main(["runs", "--model", "flight_delay"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("git commit"))
    assert row.split()[2:] == ["0123456789", "0123456789+dirty"], row


def test_status_while_a_run_writes_the_warehouse_still_shows_the_models(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """DuckDB lets one process write a file and no other read it meanwhile: `mlops status` said only "try again when
    it ends", the registry part too, which needs no warehouse (with the daemon running, a run often writes)."""
    _registry_with_history(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    hold = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); c.execute('CREATE TABLE t (x INT)'); "
        "print('holding', flush=True); time.sleep(60)"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", hold, str(settings.warehouse_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "holding"
        assert main(["status", "--model", "flight_delay"]) == 0
        shown = capsys.readouterr().out
        assert "Warehouse: a run is writing it; rows, quarantine, features and monitoring show once it ends" in shown
        assert "champion" in shown and "v0002" in shown, shown  # the registry part, read from its files
        assert main(["status", "--json"]) == 0
        assert "is being written by a run" in json.loads(capsys.readouterr().out)["warehouse_busy"]
    finally:
        writer.kill()
        writer.wait()


def test_a_ui_port_out_of_range_and_a_missing_workspace_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["ui", "--port", "99999"])
    assert stop.value.code == 2 and "must be a port number from 1 to 65535, got 99999" in capsys.readouterr().err
    assert main(["ui", "--workspace", str(tmp_path / "missing.yaml")]) == 2
    printed = capsys.readouterr()
    assert "error: no workspace file" in printed.err and "Dagster UI on" not in printed.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--from", "2013-05", "--through", "2013-03"], "2013-05 is after 2013-03"),
        (["replay", "--month", "2013-01\n"], "is not of the form YYYY-MM"),
        (["runs", "--last", "0"], "must be a positive number"),
        (["runs", "--model", "nope"], "invalid choice"),
        (["runs", "--last", "abc"], "argument --last: must be a positive number, got 'abc'"),
        (["replay", "--through", "2013-03", "--every", "x"], "argument --every: must be a positive number, got 'x'"),
        # a mistyped option is named, not reported as a required option missing
        (["replay", "--thru", "2013-03"], "unknown option --thru (did you mean --through?)"),
        (["status", "--jsn"], "unknown option --jsn (did you mean --json?)"),
        (["months", "--tagz=x"], "unknown option --tagz (did you mean --tags?)"),
        (["models", "--model", "flight_delay"], "unknown option --model\n"),  # never "did you mean --help?"
    ],
)
def test_wrong_arguments_get_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse refuses before any command runs
        code = stop.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_make_pipeline_works_in_a_data_dir_whose_path_has_spaces(tmp_path: Path) -> None:
    """The README's main command on a thin slice (EVERY=20) in `a data dir/`: both models trained, nothing written
    outside it, and `make clean-data` empties it."""
    import os
    import shutil

    from mlops_assets.core.settings import REPO_ROOT

    data_dir = tmp_path / "a data dir"
    env = {k: v for k, v in os.environ.items() if k not in ("MLOPS_DATA_DIR", "DAGSTER_HOME", "MAKEFLAGS", "MFLAGS")}
    make = shutil.which("make")
    assert make, "make is one of the README's two commands"
    done = subprocess.run(
        [make, "pipeline", f"MLOPS_DATA_DIR={data_dir}", "EVERY=20"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "flight_delay" in done.stdout and "flight_cancellation" in done.stdout
    for model in ("flight_delay", "flight_cancellation"):
        assert (data_dir / "registry" / model / "aliases.json").exists()
    assert (data_dir / "dagster_home" / "dagster.yaml").exists() and (data_dir / "warehouse.duckdb").exists()
    cleaned = subprocess.run(
        [make, "clean-data", f"MLOPS_DATA_DIR={data_dir}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cleaned.returncode == 0 and not any(data_dir.iterdir()), cleaned.stderr


@pytest.mark.parametrize(
    ("command", "hint"),
    [("serve", "`make serve PORT={next}`, `mlops serve --port {next}`"), ("ui", "`mlops ui --port 3001`")],
)
def test_a_server_on_a_port_in_use_says_so_before_starting_anything(
    settings: Settings, capsys: pytest.CaptureFixture[str], command: str, hint: str
) -> None:
    """A second `make ui` used to start a second Dagster daemon on the instance before its webserver failed to bind;
    a second `make serve` loaded every model and printed its banner first."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([command, "--port", str(port)]) == 1
    error = _error_line(capsys)
    assert f"error: port {port} is in use" in error and hint.format(next=port + 1) in error, error
    assert not settings.dagster_home.exists()  # nothing started, not even the instance's folder


@pytest.mark.parametrize("command", ["serve", "ui"])
@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("999.1.1.1", "--host 999.1.1.1 is neither an address nor a name this machine resolves"),
        ("192.0.2.1", "--host 192.0.2.1 is not an address of this machine"),  # TEST-NET-1: never a local address
    ],
)
def test_a_server_on_a_host_it_cannot_listen_on_says_so_before_starting_anything(
    settings: Settings, capsys: pytest.CaptureFixture[str], command: str, host: str, said: str
) -> None:
    """`mlops serve --host 999.1.1.1` loaded every model and printed its banner, then uvicorn failed (exit 3)."""
    assert main([command, "--host", host, "--port", "0" if command == "serve" else "3999"]) == 2
    assert said in _error_line(capsys)
    assert not settings.dagster_home.exists()  # nothing started, not even the instance's folder


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """`mlops status --json | head -c 20`: the reader is gone before the command writes (here: from the start, so it
    shows every time); it ends with exit 1 and no BrokenPipeError traceback, during the command or at exit."""
    script = (
        "import os, sys\n"
        "read, write = os.pipe()\n"
        "os.close(read)\n"
        "os.dup2(write, 1)\n"
        "from mlops_assets.cli import main\n"
        "sys.exit(main(['status', '--json']))\n"
    )
    env = {**os.environ, "MLOPS_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stderr == "", done.stderr


def test_the_code_server_health_check_says_why_it_fails() -> None:
    """Nothing listens on the port: unhealthy, with the reason (a live code server answers SERVING in
    deploy/test_postgres_daemon.py and in the compose stack's health checks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        done = subprocess.run(
            [sys.executable, "-m", "mlops_assets.healthcheck", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done
    assert f"code server 127.0.0.1:{port} did not answer" in done.stderr, done.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "mlops_assets.healthcheck"], capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_a_code_server_serving_a_load_error_is_unhealthy(tmp_path: Path) -> None:
    """It answers SERVING and serves its load error to the webserver and the daemon for good (a deployment hunt saw
    one that opened the instance during a PostgreSQL outage do that, its health check green, the queue stuck)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "code-server",
            "start",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "no_such_module_here",
            "--location-name",
            "broken",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, done = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            done = subprocess.run(
                [sys.executable, "-m", "mlops_assets.healthcheck", "127.0.0.1", str(port)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if "serves a load error" in done.stderr:
                break
            time.sleep(1)
        assert done is not None and done.returncode == 1, done
        assert "serves a load error, not the code: " in done.stderr and "no_such_module_here" in done.stderr, done
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_summary_says_what_to_do_next_and_how_to_call_mlops(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["models"]) == 0  # nothing trained yet: the one thing to do
    out = capsys.readouterr().out
    assert "none yet (no champion)" in out and "make pipeline" in out and "make serve" not in out
    _registry_with_history(settings)
    # run as `make pipeline` runs it: by its path in the venv, which is not on the PATH
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).with_name("mlops")), "models"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "make ui" in out and "make serve" in out
    assert f"{Path(sys.executable).with_name('mlops')} status" in out or ".venv/bin/mlops status" in out, out
    assert "what the platform holds" in out.split("status", 1)[1], out
    assert "replay --month" not in out  # nothing landed: no next month to name
    replay_months(settings.landing_dir, ["2013-03"], every=50)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "replay --month 2013-04" in out and "land the next month" in out, out  # the loop's next step
    replay_months(settings.landing_dir, ["2013-12"], every=50)
    assert main(["models"]) == 0
    assert "replay --month" not in capsys.readouterr().out  # the feed ends in 2013-12


def test_in_the_image_the_next_steps_name_its_commands_not_the_makefile(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform image has no Makefile (deploy/README.md): `make pipeline` there was no rule to make target."""
    from mlops_assets.catalog import CATALOG
    from mlops_assets.core.settings import IN_IMAGE_ENV
    from mlops_assets.serving.store import load_store

    monkeypatch.setenv(IN_IMAGE_ENV, "1")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "dagster job launch -w /app/deploy/workspace.yaml -j training_pipeline" in out and "make " not in out
    _registry_with_history(settings)
    assert main(["models"]) == 0
    assert "make " not in capsys.readouterr().out  # the stack's UI and service already run
    with pytest.raises(FileNotFoundError, match="mlops replay --through YYYY-MM`, then `dagster job launch") as refused:
        load_store(CATALOG.models[0].features, settings.data_dir / "nowhere", None)
    assert "make " not in str(refused.value)


def test_the_next_steps_line_up_each_command_beside_what_it_does() -> None:
    lines = command_table(
        [("make ui", "the Dagster UI " + "and more " * 20), (".venv/bin/mlops status", "what the platform holds")]
    )
    assert lines[-1] == "  .venv/bin/mlops status  what the platform holds"
    assert lines[0].startswith("  make ui                 the Dagster UI and more")
    assert all(len(line) <= 116 for line in lines) and lines[1].startswith(" " * 26 + "more and")
    # a long absolute path to mlops: its description goes below it rather than pushing the column to the right
    long_path = "/home/someone/projects/mlops/.venv/bin/mlops status"
    assert command_table([("make ui", "the UI"), (long_path, "what it holds")]) == [
        "  make ui  the UI",
        f"  {long_path}",
        "           what it holds",
    ]


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--month", "2014-01"], "nycflights13 covers 2013-01..2013-12; 2014-01 has no data"),
        (["--through", "2012-12"], "nycflights13 starts at 2013-01"),
        (["--from", "2013-05", "--through", "2013-02"], "give --from at or before --through"),
        (["--from", "2013-02", "--month", "2013-05"], "--from goes with --through; --month lands exactly one month"),
    ],
)
def test_a_replay_outside_the_feed_says_why_before_landing_anything(
    settings: Settings, capsys: pytest.CaptureFixture[str], arguments: list[str], said: str
) -> None:
    assert main(["replay", *arguments]) == 2
    printed = capsys.readouterr()
    assert said in printed.err and "Traceback" not in printed.err
    assert "Landing" not in printed.out and not settings.landing_dir.exists()


def _partitions(settings: Settings) -> list[str]:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        return instance.get_dynamic_partitions("months")


def test_months_landed_by_hand_become_partitions_and_a_future_month_is_left_out(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Months landed without `mlops replay` and no daemon to add them: the range `--tags` printed named partitions the
    instance did not have, and the job failed with a traceback. A month after the current one (a wrong year) is
    rejected at raw whatever it holds: a range through it failed every run until the file was removed by hand."""
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    for month in ("2013-01", "2013-02", "2031-02"):
        for table in ("flights", "weather"):
            land_file(settings.landing_dir, table, month, b"only the layout is read")
    land_file(settings.landing_dir, "flights", "2031-03", b"only the layout is read")  # its weather never came
    for table in ("airlines", "airports", "planes"):
        land_file(settings.landing_dir, table, None, b"only the layout is read")
    assert main(["months", "--tags"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == range_tags(["2013-01", "2013-02"])
    assert "note: 2031-02 is after the current month, left out" in printed.err
    assert "remove landing/flights/2031-02.parquet, landing/weather/2031-02.parquet with their .sha256" in printed.err
    assert "remove landing/flights/2031-03.parquet with their .sha256" in printed.err  # only the files there are
    assert _partitions(settings) == ["2013-01", "2013-02", "2031-02", "2031-03"]  # as the landing sensor adds them


def test_land_puts_a_file_of_ones_own_in_the_landing_zone_with_its_checksum_and_its_month(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rejection messages name it: before, they named a Python function (`land_file`) or `mlops replay`, which
    lands the packaged data over the user's file."""
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    delivery = tmp_path / "april delivery.parquet"
    replay_months(tmp_path / "feed", ["2013-04"], every=50)
    rows = (tmp_path / "feed" / "flights" / "2013-04.parquet").read_bytes()
    delivery.write_bytes(rows)
    assert main(["land", str(delivery), "--table", "flights", "--month", "2013-04"]) == 0
    printed = capsys.readouterr().out
    landed = settings.landing_dir / "flights" / "2013-04.parquet"
    assert landed.read_bytes() == rows
    digest = (settings.landing_dir / "flights" / "2013-04.parquet.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(rows).hexdigest() and f"sha256 {digest[:12]}" in printed
    assert "landed    flights/2013-04.parquet" in printed and "2013-04 added as a partition" in printed
    assert _partitions(settings) == ["2013-04"]
    assert main(["land", str(delivery), "--table", "flights", "--month", "2013-04"]) == 0
    assert "unchanged" in capsys.readouterr().out
    for argv, error in [
        (["--table", "flight", "--month", "2013-04"], "no table 'flight'; the feeds' tables: flights, weather"),
        (["--table", "flights"], "flights is a monthly table: give --month YYYY-MM"),
        (["--table", "planes", "--month", "2013-04"], "planes is a reference table (one file, no month): drop --month"),
        (["--table", "flights", "--month", "2031-04"], "2031-04 is after the current month: a batch cannot hold"),
    ]:
        assert main(["land", str(delivery), *argv]) == 2
        assert error in _error_line(capsys)
    assert main(["land", str(tmp_path / "missing.parquet"), "--table", "planes"]) == 2
    assert "cannot read" in _error_line(capsys) and not (settings.landing_dir / "reference").exists()


def test_land_refuses_a_file_the_pipeline_would_reject_whole_unless_told_to_land_it_unchecked(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Said at once, not by a failed run later; the pipeline still judges a file landed --unchecked (or by a feed
    writing the landing zone itself): rejected whole, every row kept in quarantine."""
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    replay_months(tmp_path / "feed", ["2013-04"], every=50)
    april = pl.read_parquet(tmp_path / "feed" / "flights" / "2013-04.parquet")
    files = {"garbage": b"the rows of April", "renamed": april.rename({"distance": "dist"}), "empty": april.head(0)}
    for name, content in files.items():
        path = tmp_path / f"{name}.parquet"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.write_parquet(path)
    for name, said in [
        ("garbage", "not landed: not readable as parquet: "),
        ("renamed", "not landed: its columns are not the flights contract's: column 'distance' is missing (renamed "),
        ("empty", "not landed: it holds no row"),
    ]:
        assert main(["land", str(tmp_path / f"{name}.parquet"), "--table", "flights", "--month", "2013-04"]) == 2
        error = _error_line(capsys)
        assert said in error and "land it with --unchecked" in error and "DUCKDB_INTERNAL" not in error, error
        assert not settings.landing_dir.exists()
    # a weather month landed as flights: the hint names the table its columns are
    weather = tmp_path / "feed" / "weather" / "2013-04.parquet"
    assert main(["land", str(weather), "--table", "flights", "--month", "2013-04"]) == 2
    assert "(they are the weather table's: --table weather?)" in _error_line(capsys)
    assert (
        main(["land", str(tmp_path / "garbage.parquet"), "--table", "flights", "--month", "2013-04", "--unchecked"])
        == 0
    )
    assert (settings.landing_dir / "flights" / "2013-04.parquet").read_bytes() == b"the rows of April"


def test_months_stop_before_a_month_a_table_has_not_landed_for(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run over a month whose weather has not landed would fail at its ingest: `mlops months` covers the complete
    months before it, names what is missing and how to land it (the landing sensor waits for such a month too)."""
    for table, month in [
        ("flights", "2013-01"),
        ("weather", "2013-01"),
        ("flights", "2013-02"),
        ("flights", "2013-03"),
    ]:
        land_file(settings.landing_dir, table, month, b"only the layout is read")
    land_file(settings.landing_dir, "weather", "2013-03", b"only the layout is read")
    for table in ("airlines", "airports", "planes"):
        land_file(settings.landing_dir, table, None, b"only the layout is read")
    assert main(["months", "--tags"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == range_tags(["2013-01"])
    assert (
        "note: 2013-02 waits for weather (land weather/2013-02.parquet: `mlops land FILE --table weather --month "
        "2013-02`, or `mlops replay --month 2013-02` for the packaged data)" in printed.err
    )
    assert "note: the months covered end at 2013-01" in printed.err and "2013-03" not in printed.err
    land_file(settings.landing_dir, "weather", "2013-02", b"only the layout is read")
    assert main(["months"]) == 0
    printed = capsys.readouterr()
    assert printed.out.split() == ["2013-01", "2013-02", "2013-03"] and printed.err == ""
    (settings.landing_dir / "weather" / "2013-01.parquet").unlink()
    assert main(["months", "--tags"]) == 1
    printed = capsys.readouterr()
    assert "error: no landed month is complete before 2013-01: land the files above" in printed.err
    assert printed.out == "{}\n"  # `--tags "$(mlops months --tags)"` stays valid JSON: each step then says what to do
    # every month's validation and features read the reference tables: without one, no month can run
    land_file(settings.landing_dir, "weather", "2013-01", b"only the layout is read")
    (settings.landing_dir / "reference" / "planes.parquet").unlink()
    assert main(["months", "--tags"]) == 1
    printed = capsys.readouterr()
    assert printed.out == "{}\n"
    assert "the reference table(s) planes have not landed: land landing/reference/planes.parquet" in printed.err
    assert "or run `mlops replay --through 2013-03`" in printed.err
    assert main(["status"]) == 0
    assert "Reference tables not landed: planes (no month can be built without them" in capsys.readouterr().out


def test_months_stop_before_a_month_nothing_has_landed_for(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """2013-01, 02 and 04 landed, 03 not at all: the range covered 2013-01..04, and the run failed at 04's features
    (their look-back reads 03), training nothing. It stops before the gap and says how to fill it."""
    for month in ("2013-01", "2013-02", "2013-04"):
        for table in ("flights", "weather"):
            land_file(settings.landing_dir, table, month, b"only the layout is read")
    for table in ("airlines", "airports", "planes"):
        land_file(settings.landing_dir, table, None, b"only the layout is read")
    assert main(["months", "--tags"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == range_tags(["2013-01", "2013-02"])
    assert "note: nothing has landed for 2013-03: land it (`mlops replay --month 2013-03`" in printed.err
    assert "the months covered end at 2013-02" in printed.err


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--through", "2014-03"], "nycflights13 covers 2013-01..2013-12; 2014-01, 2014-02, 2014-03 has no data"),
        (["--from", "2013-05", "--through", "2013-03"], "give --from at or before --through"),
        (["--through", "2013-03"], "simulate needs more than 3 months"),
    ],
)
def test_a_simulation_outside_the_feed_says_why_before_clearing_or_landing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], said: str
) -> None:
    data_dir = tmp_path / "simulation"
    assert main(["simulate", "--data-dir", str(data_dir), *arguments]) == 2
    printed = capsys.readouterr()
    assert said in printed.err and "Traceback" not in printed.err
    assert "Simulating" not in printed.out and not data_dir.exists()


def test_a_simulation_folder_that_cannot_be_one_is_refused_before_anything_is_said_or_cleared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "Simulating ... (cleared first)", then refused the folder with exit 1."""
    (tmp_path / "notes.txt").write_text("mine")
    afile = tmp_path / "notes.txt"
    for folder, said in [(tmp_path, "is not empty and was not made by `mlops simulate`"), (afile, "is a file")]:
        assert main(["simulate", "--data-dir", str(folder)]) == 2
        printed = capsys.readouterr()
        assert said in printed.err and "Simulating" not in printed.out, printed
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("command", ["replay", "simulate"])
def test_every_must_be_a_positive_number_of_rows(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--every", "0"])
    assert exited.value.code == 2 and "--every" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("MLOPS_DRIFT_SHARE", "abc", "$MLOPS_DRIFT_SHARE must be a number above 0 and at most 1, got 'abc'"),
        ("MLOPS_DRIFT_SHARE", "0", "$MLOPS_DRIFT_SHARE must be a number above 0"),
        ("MLOPS_DRIFT_SHARE", "nan", "$MLOPS_DRIFT_SHARE must be a number above 0"),
        ("MLOPS_RETRAIN_AUC_MARGIN", "-0.1", "$MLOPS_RETRAIN_AUC_MARGIN must be a number at least 0 and at most 1"),
        ("MLOPS_RETRAIN_AUC_MARGIN", "inf", "$MLOPS_RETRAIN_AUC_MARGIN must be a number at least 0"),
        ("MLOPS_TRAINING_WINDOW_MONTHS", "-3", "$MLOPS_TRAINING_WINDOW_MONTHS must be 0 (no limit) or positive"),
        ("MLOPS_SENSOR_INTERVAL_S", "5.5", "$MLOPS_SENSOR_INTERVAL_S must be a whole number"),
        ("MLOPS_DAGSTER_POSTGRES_URL", "mysql://u:p@h/db", "$MLOPS_DAGSTER_POSTGRES_URL names a mysql database"),
    ],
)
def test_a_setting_out_of_range_is_one_error_line_and_nothing_lands(
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    said: str,
) -> None:
    """Every command reads the settings first: a bad value is named with what it accepts (exit 2), not a traceback,
    and `mlops replay` lands nothing (the PostgreSQL URL checked before the files)."""
    monkeypatch.setenv(variable, value)
    commands = [["replay", "--month", "2013-01"]]
    if variable != "MLOPS_DAGSTER_POSTGRES_URL":  # the instance's storage: only the commands that open it
        commands.append(["status"])
    for command in commands:
        assert main(command) == 2, command
        printed = capsys.readouterr()
        assert said in printed.err and "Traceback" not in printed.err, printed.err
        assert not settings.landing_dir.exists()


@pytest.mark.parametrize(
    ("variable", "command", "said"),
    [
        ("MLOPS_DATA_DIR", "status", "the data directory {} is a file: point $MLOPS_DATA_DIR at a folder"),
        ("DAGSTER_HOME", "home", "the Dagster home {} is a file or under one: point $DAGSTER_HOME at a folder"),
    ],
)
def test_a_data_dir_or_dagster_home_that_is_a_file_is_named(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    command: str,
    said: str,
) -> None:
    a_file = tmp_path / "a file"
    a_file.write_text("not a folder")
    monkeypatch.setenv(variable, str(a_file))
    assert main([command]) == 2
    assert said.format(a_file) in _error_line(capsys)


def test_resume_in_a_data_dir_where_nothing_ran_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mistyped = tmp_path / "dta"
    monkeypatch.setenv("MLOPS_DATA_DIR", str(mistyped))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("MLOPS_DAGSTER_POSTGRES_URL", raising=False)  # on PostgreSQL the runs live in the database
    assert main(["resume", "0f6b1c2e-0000-4000-8000-000000000000"]) == 1
    line = _error_line(capsys)
    assert f"no Dagster instance at {mistyped / 'dagster_home'}" in line and "$MLOPS_DATA_DIR" in line
    assert not mistyped.exists()  # nothing created where nothing ran


def test_doctor_in_a_data_dir_where_nothing_was_trained_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlops doctor --repair` there made every model's registry folder with its lock files."""
    mistyped = tmp_path / "dta"
    monkeypatch.setenv("MLOPS_DATA_DIR", str(mistyped))
    assert main(["doctor", "--repair"]) == 0
    assert "flight_delay: no registry yet in" in capsys.readouterr().out
    assert not mistyped.exists()


@pytest.mark.parametrize("run_ended", [True, False])
def test_a_stopped_simulation_says_how_its_last_run_ended_and_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, run_ended: bool
) -> None:
    """A stop asked for during a run that then ended well must not be called an interrupted run (the year itself is
    stopped by real signals in test_simulation.py)."""
    from mlops_assets import simulation
    from mlops_assets.ticks import ExecutedRun, RunInterrupted

    def stopped(*_: object, **__: object) -> None:
        raise RunInterrupted(ExecutedRun("automation", "0123456789abcdef", run_ended, (), "2013-04", {}))

    import signal

    monkeypatch.setattr(simulation, "simulate", stopped)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["simulate", "--data-dir", str(tmp_path / "sim"), "--every", "20"]) == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler given back
    said = capsys.readouterr().err
    ended = "ended, and no run starts after it" if run_ended else "ended interrupted (marked failed), and no run"
    assert f"stopped: run 01234567 {ended}" in said, said
