"""Compile the pipeline to YAML: ``python -m pipeline.compile`` regenerates the committed template.

The committed ``pipeline/samdrop_pipeline.yaml`` uses the default image; a deployment compiles its
own with ``compile_pipeline(path, image=...)`` (the Vertex starter also swaps in
``SAMDROP_PIPELINE_IMAGE`` when the template names another image).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.components import DEFAULT_IMAGE
from pipeline.pipeline import DEFAULT_PARALLELISM, build_pipeline

TEMPLATE = Path(__file__).resolve().parent / "samdrop_pipeline.yaml"


def compile_pipeline(
    output_path: Path, *, image: str = DEFAULT_IMAGE, parallelism: int = DEFAULT_PARALLELISM
) -> Path:
    """Write the compiled pipeline spec to ``output_path`` and return it."""
    from kfp import compiler

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, parallelism), str(output_path))
    return output_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compile", description=__doc__)
    parser.add_argument("--output", type=Path, default=TEMPLATE, help=f"default: {TEMPLATE}")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="components' container image")
    parser.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM, help="shards run at once")
    args = parser.parse_args(argv)
    print(compile_pipeline(args.output, image=args.image, parallelism=args.parallelism))
    return 0


if __name__ == "__main__":
    sys.exit(main())
