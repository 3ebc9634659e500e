"""Where a ``samdrop`` command finds what it talks to, from any folder: the local stack's state
directory (the user's, as XDG says) and, without a local stack, the Google Cloud project as gcloud
configures it. Both read the environment mapping the edge passes in (``deploy.command``)."""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path

# Where the state lived before it moved to the user's state directory: relative to the folder the
# stack was started from. `local status` names it when a stack is recorded there.
LEGACY_STATE_DIR = Path(".samdrop")
STATE_DIR_VAR = "SAMDROP_STATE_DIR"
STATE_DIR_DEFAULT = "$XDG_STATE_HOME/samdrop"  # as `samdrop settings` shows it
# Variables naming the project before gcloud's configuration is read: the client libraries' own,
# then gcloud's property override (gcloud: an environment property wins over the config file).
PROJECT_VARS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")


def user_state_dir(env: Mapping[str, str], home: Path | None = None) -> Path:
    """The local stack's state directory: ``$SAMDROP_STATE_DIR``, else ``$XDG_STATE_HOME/samdrop``,
    else ``~/.local/state/samdrop`` (XDG Base Directory; a relative XDG_STATE_HOME is ignored, as the
    specification says). Absolute, so every folder a command runs from finds the same stack."""
    if env.get(STATE_DIR_VAR):
        return Path(env[STATE_DIR_VAR]).expanduser().absolute()
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else (home or Path.home()) / ".local" / "state"
    return base / "samdrop"


def gcloud_project(env: Mapping[str, str], home: Path | None = None) -> str | None:
    """The project gcloud would use: ``GOOGLE_CLOUD_PROJECT`` or ``CLOUDSDK_CORE_PROJECT``, else the
    ``[core] project`` of gcloud's active configuration (``$CLOUDSDK_CONFIG`` or ~/.config/gcloud,
    ``CLOUDSDK_ACTIVE_CONFIG_NAME`` or the ``active_config`` file); None when none is set. Reads the
    files instead of running ``gcloud config get-value project`` (a second of Python start-up)."""
    for var in PROJECT_VARS:
        if env.get(var, "").strip():
            return env[var].strip()
    config_dir = Path(env["CLOUDSDK_CONFIG"]) if env.get("CLOUDSDK_CONFIG") else None
    if config_dir is None:
        config_dir = (home or Path.home()) / ".config" / "gcloud"
    name = env.get("CLOUDSDK_ACTIVE_CONFIG_NAME", "").strip()
    if not name:
        try:
            name = (config_dir / "active_config").read_text(encoding="utf-8").strip() or "default"
        except OSError:
            name = "default"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config_dir / "configurations" / f"config_{name}", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None  # a file gcloud itself would refuse: as if no project were set
    project = parser.get("core", "project", fallback="").strip()
    return project or None
