"""The platform image's entrypoint (deploy/entrypoint.sh), run by sh here as the image runs it."""

import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "entrypoint.sh"


def _entrypoint(tmp_path: Path, password: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "MLOPS_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")}
    env["MLOPS_POSTGRES_PASSWORD"] = password
    # `mlops home` is not on this PATH: a password that passes goes on to it and fails there, after the check
    command = ["sh", str(ENTRYPOINT), "true"]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("password", ["Tr0ub4dor@3%xy", "a:b", "what?", "x#y", "two words"])
def test_a_password_that_cannot_stand_in_the_instance_url_is_refused_at_start(tmp_path: Path, password: str) -> None:
    """compose.yaml pastes it into $MLOPS_DAGSTER_POSTGRES_URL: '@' made the rest of it a host name, retried for a
    minute with part of the password in the error."""
    done = _entrypoint(tmp_path, password)
    assert done.returncode == 1
    assert "MLOPS_POSTGRES_PASSWORD holds a character a URL cannot carry as it is" in done.stderr
    assert password not in done.stderr


@pytest.mark.parametrize("password", ["dagster", "S3cret-pass_word.~+=/"])
def test_a_password_a_url_carries_goes_on(tmp_path: Path, password: str) -> None:
    done = _entrypoint(tmp_path, password)
    assert "MLOPS_POSTGRES_PASSWORD" not in done.stderr
    assert "mlops" in done.stderr  # the next step, `mlops home`, which this PATH lacks
