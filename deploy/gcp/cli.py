"""``samdrop deploy`` and ``samdrop destroy``: the whole system in a Google Cloud project, and back out.

Both build their plan first (which validates every option), print it with ``--dry-run`` and stop,
or check gcloud and credentials and then execute the same steps.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from deploy.gcp.options import DEFAULT_GPU, GPU_MACHINE_TYPES, DeployOptions
from samdrop.models import BY_NAME, DEPLOY_DEFAULT
from samdrop.settings import Settings

if TYPE_CHECKING:  # the Google clients load only when a command runs
    from deploy.gcp.executor import Report
    from deploy.gcp.plan import Step, StepResult


def add_commands(subparsers: Any) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="create or update samdrop in a Google Cloud project (idempotent; --dry-run prints the plan)",
    )
    _common(deploy)
    deploy.add_argument(
        "--model-type",
        help="a model type of `samdrop models list` (default: SAMDROP_MODEL_TYPE if set, else "
        f"{DEPLOY_DEFAULT}; classic runs on a CPU machine with no GPU)",
    )
    deploy.add_argument(
        "--checkpoint",
        help="the weights, if not the type's official ones: gs:// (Meta's .pth, file or folder, or a "
        "save_pretrained folder; used where it is) or https:// (a SAM 1 .pth; copied to the models bucket)",
    )
    deploy.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="deploy --model-type tiny anyway (random weights, meaningless masks: pipeline tests only)",
    )
    deploy.add_argument(
        "--gpu",
        help=f"{', '.join(GPU_MACHINE_TYPES)} (default {DEFAULT_GPU}; none for CPU-only model types)",
    )
    deploy.add_argument("--accelerator-count", type=int, default=1, help="GPUs per replica (default 1)")
    deploy.add_argument(
        "--min-replicas",
        type=int,
        default=0,
        help="endpoint replicas always running (default 0: scales to zero when idle, and the first "
        "request after that waits for a replica to start)",
    )
    deploy.add_argument("--max-replicas", type=int, default=1, help="endpoint autoscaling ceiling")
    deploy.add_argument("--function-memory", default="2Gi", help="function memory (default 2Gi)")
    deploy.add_argument("--function-cpu", type=int, default=1, help="function vCPUs (default 1)")
    deploy.add_argument(
        "--function-concurrency", type=int, default=4, help="requests per function instance (default 4)"
    )
    deploy.add_argument(
        "--function-timeout", type=int, default=540, help="seconds per event, at most 540 (default)"
    )
    deploy.add_argument(
        "--function-max-instances", type=int, default=20, help="function instances at most (default 20)"
    )
    deploy.add_argument(
        "--image-tag", help="predictor image tag (default: src-<digest of the code that goes into it>)"
    )
    deploy.set_defaults(func=deploy_command)

    destroy = subparsers.add_parser(
        "destroy", help="remove what `samdrop deploy` created (the bucket's data stays unless --delete-data)"
    )
    _common(destroy)
    destroy.add_argument(
        "--delete-data", action="store_true", help="also delete the bucket(s) and every object in them"
    )
    destroy.add_argument(
        "--checkpoint", help="the --checkpoint deploy used: its bucket's grant to the pipeline goes too"
    )
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    destroy.set_defaults(func=destroy_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", default="us-central1", help="region (default us-central1)")
    parser.add_argument("--bucket", help="upload bucket (default: <project>-samdrop)")
    parser.add_argument(
        "--results-bucket",
        help="bucket for masks and reports, which uploaders cannot write "
        "(default: SAMDROP_RESULTS_BUCKET, else <bucket>-results)",
    )
    parser.add_argument(
        "--pipelines-bucket",
        help="bucket for the pipeline template, which only you write (default: <bucket>-pipelines)",
    )
    parser.add_argument(
        "--models-bucket",
        help="bucket deploy copies the weights into, which only you write (default: <bucket>-models)",
    )
    parser.add_argument(
        "--uploader",
        action="append",
        default=[],
        metavar="MEMBER",
        help="IAM member (user:…, group:…, serviceAccount:…, domain:…) who may write the upload bucket "
        "and nothing else; repeatable (destroy: removes those grants)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print every API call and gcloud command; change nothing"
    )


def deploy_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.gcp.function_source import source_digest
    from deploy.gcp.steps import deploy_steps

    digest = source_digest()
    checkpoint = args.checkpoint if args.checkpoint is not None else settings.checkpoint
    if checkpoint == "auto":  # SAMDROP_CHECKPOINT's word for the type's official weights
        checkpoint = None
    options = DeployOptions(
        project=args.project,
        region=args.region,
        bucket=args.bucket or f"{args.project}-samdrop",
        results_bucket=args.results_bucket or settings.results_bucket,
        pipelines_bucket=args.pipelines_bucket,
        models_bucket=args.models_bucket,
        uploaders=tuple(args.uploader),
        model_type=_deployed_type(args.model_type or settings.model_type, checkpoint),
        checkpoint=checkpoint,
        weights_url=settings.weights_url,
        allow_random_weights=args.allow_random_weights,
        gpu=args.gpu,
        accelerator_count=args.accelerator_count,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        function_memory=args.function_memory,
        function_cpu=args.function_cpu,
        function_concurrency=args.function_concurrency,
        function_timeout_s=args.function_timeout,
        function_max_instances=args.function_max_instances,
        image_tag=args.image_tag or f"src-{digest[:12]}",
        source_digest=digest,
    )
    steps = deploy_steps(options, settings, repo_root=_repo_root())
    if BY_NAME[options.model_type].random_weights:
        print(
            f"note: model type {options.model_type} has random weights: its masks are meaningless",
            file=sys.stderr,
        )
    status = _run("deploy", steps, options, args.dry_run)
    if not args.dry_run:
        # what `samdrop upload|watch|sweep|redrive` need to reach this deployment instead of the local stack
        names = options.names
        print(
            f"clients: export SAMDROP_PROJECT={options.project} SAMDROP_BUCKET={options.bucket} "
            f"SAMDROP_RESULTS_BUCKET={names.results_bucket}"
        )
    return status


def _deployed_type(model_type: str, checkpoint: str | None) -> str:
    """``auto`` is decided here, not on the endpoint (whose artifacts folder has no type in its name):
    the type the checkpoint's file name says, else the model table's deploy default."""
    from samdrop.models import type_from_name

    if model_type != "auto":
        return model_type
    return (type_from_name(checkpoint) if checkpoint else None) or DEPLOY_DEFAULT


def destroy_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.gcp.destroy import destroy_steps

    options = DeployOptions(
        project=args.project,
        region=args.region,
        bucket=args.bucket or f"{args.project}-samdrop",
        results_bucket=args.results_bucket or settings.results_bucket,
        pipelines_bucket=args.pipelines_bucket,
        models_bucket=args.models_bucket,
        uploaders=tuple(args.uploader),
        checkpoint=args.checkpoint,
    )
    steps = destroy_steps(options, settings, delete_data=args.delete_data)
    if not args.dry_run and not args.yes:
        try:
            answer = input(f"destroy samdrop in project {options.project}? type the project id to go on: ")
        except EOFError:
            answer = ""
        if answer.strip() != options.project:
            print("nothing changed (confirm with the project id, or pass --yes)")
            return 1
    return _run("destroy", steps, options, args.dry_run)


def _run(command: str, steps: list[Step], options: DeployOptions, dry_run: bool) -> int:
    from deploy.gcp.clients import CloudClients
    from deploy.gcp.executor import Executor, SubprocessGcloud, preflight
    from deploy.gcp.plan import render_plan

    if dry_run:
        print(f"samdrop {command} --dry-run: {len(steps)} steps, in order; nothing was changed")
        print(render_plan(steps), end="")
        return 0
    gcloud = SubprocessGcloud()
    account = preflight(gcloud)
    print(f"samdrop {command}: project {options.project} as {account}, {len(steps)} steps")
    clients = CloudClients(options.project, options.region)
    try:
        Executor(gcloud, clients).run(steps, report=_report(len(steps)))
    finally:
        clients.close()
    return 0


def _report(total: int) -> Report:
    def report(number: int, step: Step, result: StepResult) -> None:
        detail = f"  {result.detail}" if result.detail else ""
        print(f"[{number:2}/{total}] {result.outcome:9} {step.key}{detail}", flush=True)

    return report


def _repo_root() -> str:
    from deploy.gcp.function_source import REPO_ROOT

    return os.path.relpath(REPO_ROOT)
