"""Cloud Storage steps through ``google-cloud-storage``: bucket, access settings, notification,
pipeline template. Each looks first and changes only what differs."""

from __future__ import annotations

import base64
import hashlib
import tempfile
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc

from deploy import resources
from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import DeployError, StepResult

TIMEOUT_S = resources.TIMEOUT_S


def ensure_bucket(clients: CloudClients, name: str, location: str) -> StepResult:
    """Bucket ``name`` in ``location``, created with uniform access and public access prevention."""
    try:
        change = resources.ensure_bucket(
            clients.storage,
            name,
            location=location,
            uniform_access=True,
            public_access_prevention="enforced",
        )
    except gexc.Forbidden:
        # bucket names are global: a 403 here usually means another project owns the name
        raise DeployError(
            f"bucket {name} exists and this account cannot use it (bucket names are global): "
            "choose another --bucket"
        ) from None
    return StepResult(change.outcome, f"gs://{name}")


def ensure_bucket_access(clients: CloudClients, name: str) -> StepResult:
    """Uniform bucket-level access on and public access prevention enforced on an existing bucket."""
    bucket = clients.storage.get_bucket(name, timeout=TIMEOUT_S)
    config = bucket.iam_configuration
    if config.uniform_bucket_level_access_enabled and config.public_access_prevention == "enforced":
        return StepResult("unchanged", f"gs://{name}")
    config.uniform_bucket_level_access_enabled = True
    config.public_access_prevention = "enforced"
    bucket.patch(timeout=TIMEOUT_S)
    return StepResult("updated", f"gs://{name}: uniform access, public access prevention enforced")


def ensure_notifications(
    clients: CloudClients,
    bucket: str,
    topic: str,
    event_types: tuple[str, ...],
    payload_format: str,
    prefixes: tuple[str, ...],
) -> StepResult:
    """One notification per object-name prefix from ``bucket`` to ``topic`` (same project), each
    with exactly these settings, so only objects under ``prefixes`` publish an event.

    Our notifications (to ``topic``) with other settings, another prefix or none, or a duplicate
    prefix are deleted (notifications cannot be updated in place); notifications to other topics
    are someone else's and stay.
    """
    gcs_bucket = clients.storage.bucket(bucket)
    ours = [n for n in gcs_bucket.list_notifications(timeout=TIMEOUT_S) if n.topic_name == topic]
    keep: dict[str, Any] = {}
    for n in ours:
        if (
            n.topic_project == clients.project
            and tuple(n.event_types or ()) == event_types
            and n.payload_format == payload_format
            and n.blob_name_prefix in prefixes
        ):
            keep.setdefault(n.blob_name_prefix, n)
    stale = [n for n in ours if keep.get(n.blob_name_prefix) is not n]
    missing = [prefix for prefix in prefixes if prefix not in keep]
    if not stale and not missing:
        return StepResult("unchanged", ", ".join(f"{n.notification_id} ({p})" for p, n in keep.items()))
    for n in stale:
        n.delete(timeout=TIMEOUT_S)
    created = []
    for prefix in missing:
        notification = gcs_bucket.notification(
            topic_name=topic,
            topic_project=clients.project,
            event_types=list(event_types),
            payload_format=payload_format,
            blob_name_prefix=prefix,
        )
        notification.create(timeout=TIMEOUT_S)
        created.append(f"{notification.notification_id} ({prefix})")
    detail = f"created {', '.join(created) or 'none'}; deleted {len(stale)}"
    return StepResult("updated" if ours else "created", detail)


def delete_notifications(clients: CloudClients, bucket: str, topic: str) -> StepResult:
    """Delete the bucket's notifications to ``topic``; a missing bucket has none."""
    gcs_bucket = clients.storage.bucket(bucket)
    try:
        ours = [n for n in gcs_bucket.list_notifications(timeout=TIMEOUT_S) if n.topic_name == topic]
    except gexc.NotFound:
        return StepResult("absent", f"gs://{bucket}")
    for notification in ours:
        notification.delete(timeout=TIMEOUT_S)
    return StepResult("deleted" if ours else "absent", f"{len(ours)} notification(s)")


def upload_pipeline_template(
    clients: CloudClients, bucket: str, object_name: str, image: str, parallelism: int
) -> StepResult:
    """Compile the KFP pipeline (``pipeline.compile.compile_pipeline``) with the components'
    ``image`` and shard ``parallelism``, and upload it unless the object holds the same bytes."""
    from pipeline.compile import compile_pipeline  # kfp: only when the template is uploaded

    with tempfile.TemporaryDirectory(prefix="samdrop-pipeline-") as folder:
        compiled = Path(
            compile_pipeline(Path(folder) / "samdrop_pipeline.yaml", image=image, parallelism=parallelism)
        )
        data = compiled.read_bytes()
    return upload_if_changed(clients, bucket, object_name, data, "application/x-yaml")


def upload_if_changed(
    clients: CloudClients, bucket: str, object_name: str, data: bytes, content_type: str
) -> StepResult:
    """Write ``data`` to ``gs://bucket/object_name`` unless the object's MD5 already matches."""
    blob = clients.storage.bucket(bucket).get_blob(object_name, timeout=TIMEOUT_S)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    uri = f"gs://{bucket}/{object_name}"
    if blob is not None and blob.md5_hash == md5:
        return StepResult("unchanged", uri)
    target = clients.storage.bucket(bucket).blob(object_name)
    # The generation precondition makes the write safe to retry: it replaces exactly what was read.
    target.upload_from_string(
        data,
        content_type=content_type,
        if_generation_match=blob.generation if blob is not None else 0,
        timeout=TIMEOUT_S,
    )
    return StepResult("updated" if blob is not None else "created", uri)


def delete_object(clients: CloudClients, bucket: str, object_name: str) -> StepResult:
    try:
        clients.storage.bucket(bucket).blob(object_name).delete(timeout=TIMEOUT_S)
    except gexc.NotFound:
        return StepResult("absent", f"gs://{bucket}/{object_name}")
    return StepResult("deleted", f"gs://{bucket}/{object_name}")
