"""The local runner's worker: ``python -m pipeline.worker --batch-id ID --bucket B --marker-generation G``.

Runs the compiled template under ``kfp.local`` with ``SubprocessRunner(use_venv=False)``: every
task is a subprocess of this environment, which already has the project installed. Started detached
by :func:`pipeline.start.launch_local`; ``samdrop batch run`` runs it in the foreground (to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from pipeline.compile import TEMPLATE
from pipeline.config import pipeline_config
from pipeline.start import local_root
from samdrop import pidfile
from samdrop.settings import Settings

log = logging.getLogger(__name__)


def template_path(settings: Settings) -> Path:
    """A local ``SAMDROP_PIPELINE_TEMPLATE`` file, else the committed template."""
    template = settings.pipeline_template
    if template and not template.startswith(("gs://", "https://")):
        return Path(template)
    return TEMPLATE


def run_local(settings: Settings, batch_id: str, bucket: str, marker_generation: int) -> dict[str, object]:
    """Run the pipeline for one batch with kfp.local; returns the pipeline's outputs."""
    from kfp import components, local

    root = local_root(settings) / "runs"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False)
    pipeline = components.load_component_from_file(str(template_path(settings)))
    with warnings.catch_warnings():
        # The template names the cloud serving image; locally the tasks run in this environment.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        task = pipeline(
            batch_id=batch_id,
            bucket=bucket,
            marker_generation=str(marker_generation),
            config=pipeline_config(settings),
            accelerator_count=0,
        )
    return dict(getattr(task, "outputs", {}) or {})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.worker", description=__doc__)
    parser.add_argument("--batch-id", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--marker-generation", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info(
        "batch %s: running the pipeline locally (marker generation %s)", args.batch_id, args.marker_generation
    )
    # `samdrop local down` finds and stops this worker and its kfp tasks (one process group) here.
    with pidfile.recorded(settings.state_dir / pidfile.WORKERS_DIR):
        run_local(settings, args.batch_id, args.bucket, args.marker_generation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
