"""Which code produced an artifact: the package version and, in a git checkout, the commit and whether it was dirty."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
from types import ModuleType
from typing import Any

from mlops_assets import __version__
from mlops_assets.core.settings import REPO_ROOT


def code_version() -> dict[str, Any]:
    """``{"package": "0.1.0", "git_commit": "abc..." | None, "git_dirty": bool | None}``."""
    info: dict[str, Any] = {"package": __version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=False
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout, or no git: the package version still identifies the code
    return info


def source_version(*modules: ModuleType, extra: str = "") -> str:
    """A short hash of the modules' source (and ``extra``, e.g. a library version): Dagster's code version of the
    assets they implement, so changing that code marks those assets for re-materialization."""
    digest = hashlib.sha256(extra.encode())
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]
