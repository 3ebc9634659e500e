"""Staging the model's weights into the models bucket: deploy fetches them once on the deploying
machine (Meta's SAM 1 file, a mirror, any https:// file, or a Hugging Face repo) and copies them to
``gs://<models bucket>/<model type>/``, so the endpoint and the pipeline read them from the project.

Downloads go through the predictor's own fetchers (``samdrop models pull`` uses the same cache:
resumable, checksummed where a checksum is known; ``HF_TOKEN`` / ``HF_ENDPOINT`` for the hub). An
object whose MD5 matches the local file is not uploaded again; other objects under the folder are
deleted, so it holds exactly one model's files (SAM 1 loads the folder's single ``.pth``).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from deploy import resources
from deploy.gcp.clients import CloudClients
from deploy.gcp.plan import StepResult

TIMEOUT_S = 600.0  # per request: a resumable upload of a 2.4 GB checkpoint sends it in chunks
CHUNK_BYTES = 1 << 20


def stage_file(clients: CloudClients, url: str, bucket: str, object_name: str, cache_dir: str) -> StepResult:
    """``url`` (http(s):// or gs://, ``#sha256=<hex>`` checked) copied to ``gs://bucket/object_name``."""
    from predictor import fetch_weights

    path = fetch_weights(url, Path(cache_dir).expanduser())
    prefix = object_name.rsplit("/", 1)[0] + "/"
    return _stage(clients, bucket, prefix, {object_name: path})


def stage_repo(
    clients: CloudClients, model_type: str, bucket: str, prefix: str, cache_dir: str
) -> StepResult:
    """The files of ``model_type``'s Hugging Face repo snapshot (config.json, model.safetensors, …)
    copied under ``gs://bucket/prefix``."""
    from predictor import download_hf_weights
    from samdrop.models import model_info

    folder = download_hf_weights(model_info(model_type), Path(cache_dir).expanduser())
    files = {prefix + path.name: path for path in sorted(folder.iterdir()) if path.is_file()}
    return _stage(clients, bucket, prefix, files)


def _stage(clients: CloudClients, bucket: str, prefix: str, files: dict[str, Path]) -> StepResult:
    gcs_bucket = clients.storage.bucket(bucket)
    existing = {blob.name: blob for blob in gcs_bucket.list_blobs(prefix=prefix, timeout=resources.TIMEOUT_S)}
    uploaded = []
    for name, path in files.items():
        blob = existing.get(name)
        if blob is not None and blob.md5_hash == file_md5(path):
            continue
        target = gcs_bucket.blob(name)
        # the generation precondition replaces exactly what was listed, so a retried write is safe
        target.upload_from_filename(
            str(path), if_generation_match=blob.generation if blob is not None else 0, timeout=TIMEOUT_S
        )
        uploaded.append(name)
    stale = sorted(set(existing) - set(files))
    for name in stale:
        existing[name].delete(timeout=resources.TIMEOUT_S)
    folder = f"gs://{bucket}/{prefix}"
    if not uploaded and not stale:
        return StepResult("unchanged", folder)
    detail = f"{folder}: uploaded {len(uploaded)} file(s), deleted {len(stale)}"
    return StepResult("updated" if existing else "created", detail)


def file_md5(path: Path) -> str:
    """The base64 MD5 of ``path``, as Cloud Storage reports ``md5Hash``."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()
