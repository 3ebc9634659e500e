"""Run the ``samdrop`` command as a user does: the console script of ``[project.scripts]``, in a
folder outside the checkout, with a home of its own (state dir, gcloud config) and no credentials.

The script is written here as pip writes it, from pyproject.toml, instead of taken from the
virtualenv's ``bin/``: an editable install made from another checkout (or before the entry point
moved) would run other code than this tree's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_console_script(folder: Path) -> Path:
    """``folder/samdrop``: the entry point pyproject.toml declares, run by this interpreter."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["samdrop"]
    module, function = target.split(":")
    script = folder / "samdrop"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
        f"if __name__ == '__main__':\n    sys.exit({function}())\n"
    )
    script.chmod(0o755)
    return script


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: PATH and this tree on PYTHONPATH; HOME, XDG_STATE_HOME and gcloud's
    config under ``home``; no SAMDROP_* variable, no emulator, no credentials, no metadata server."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {
        **keep,
        "PYTHONPATH": str(REPO),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "NO_GCE_CHECK": "true",  # google-auth: do not probe for a GCE metadata server
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def run(
    script: Path, *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
