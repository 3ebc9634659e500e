"""``samdrop results get``, and ``upload --wait --download``: an input's outputs (mask PNGs,
``masks.json`` or ``error.json``, ``overlay.jpg``, ``completion.json``) from ``results/<input
path>/`` (:func:`samdrop.layout.output_paths`) into a local folder."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from samdrop.errors import InvalidRequest, SamdropError
from samdrop.layout import OutputPaths, input_generation, output_paths
from samdrop.settings import Settings
from samdrop.storage import ObjectInfo, ObjectStore

DOWNLOAD_THREADS = 8


class NoResults(SamdropError):
    """The input has no outputs (yet) for the generation asked for."""

    code = "not_found"


def input_name(settings: Settings, text: str) -> str:
    """The object name of an input given as ``gs://<bucket>/<name>`` or as ``<name>``."""
    name = text
    if text.startswith("gs://"):
        bucket, _, name = text[len("gs://") :].partition("/")
        if bucket != settings.bucket:
            raise InvalidRequest(
                f"{text} is not in the uploads bucket {settings.bucket} (SAMDROP_BUCKET): give its object "
                "name or a gs:// URI in that bucket"
            )
    if not name or name.endswith("/"):
        raise InvalidRequest(f"{text!r} names no object: give e.g. {settings.incoming_prefix}cat.jpg")
    if name.startswith(settings.results_prefix) and settings.output_bucket == settings.bucket:
        raise InvalidRequest(f"{text} is an output, not an input")
    return name


def outputs_of(
    store: ObjectStore, settings: Settings, name: str, generation: int | None = None
) -> tuple[OutputPaths, int, list[ObjectInfo]]:
    """The outputs of input ``name`` at ``generation``: by default the input's current generation,
    or, when the input is gone, the newest generation with outputs. Raises :class:`NoResults`."""
    paths = output_paths(settings, name)
    by_generation: dict[int, list[ObjectInfo]] = defaultdict(list)
    for info in store.list(paths.bucket, paths.folder).values():
        tagged = input_generation(info.metadata)
        if tagged is not None:
            by_generation[tagged].append(info)
    uri = f"gs://{settings.bucket}/{name}"
    if generation is None:
        current = store.stat(settings.bucket, name)
        if current is not None:
            generation = current.generation
        elif by_generation:
            generation = max(by_generation)
        else:
            raise NoResults(f"{uri} does not exist and has no results in {paths.uri(paths.folder)}")
    if generation not in by_generation:
        raise NoResults(
            f"{uri} (generation {generation}) has no results in {paths.uri(paths.folder)} yet: it may still "
            "be in work (samdrop watch shows completions), or was never uploaded under a watched prefix"
        )
    return paths, generation, sorted(by_generation[generation], key=lambda info: info.name)


def download(
    store: ObjectStore, paths: OutputPaths, objects: list[ObjectInfo], out_dir: Path, name: str
) -> Path:
    """Write ``objects`` (from :func:`outputs_of`) to ``out_dir/<input name>/``, each at the version
    listed; returns that folder. An input name that would leave ``out_dir`` is refused."""
    root = out_dir.resolve()
    folder = (root / name).resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise InvalidRequest(f"input name {name!r} would be written outside {out_dir}: download it by hand")
    folder.mkdir(parents=True, exist_ok=True)

    def fetch(info: ObjectInfo) -> None:
        data = store.read(paths.bucket, info.name, generation=info.generation)
        (folder / info.name[len(paths.folder) :]).write_bytes(data)

    with ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="samdrop-download") as pool:
        list(pool.map(fetch, objects))
    return folder
