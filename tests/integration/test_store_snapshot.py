"""deploy/store_snapshot.py against real fake-gcs-server processes (memory backend, as the stack runs
it): save from one server, restore into a new, empty one, through the client library."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.cloud import storage

from deploy import processes, store_snapshot
from deploy.local import (
    HOST,
    LEGACY_GCS_DIR,
    LocalStack,
    emulator_storage_client,
    fake_gcs_binary,
    find_free_port,
)
from deploy.processes import LocalStackError
from samdrop.layout import GENERATION_KEY
from samdrop.settings import Settings

pytestmark = pytest.mark.integration

Server = Callable[..., storage.Client]


@pytest.fixture
def new_server(tmp_path: Path) -> Iterator[Server]:
    """Starts fake-gcs-servers on free ports (memory backend unless ``backend`` flags say otherwise);
    all are stopped afterwards."""
    records: list[processes.ProcessRecord] = []
    clients: list[storage.Client] = []

    def start(*backend: str) -> storage.Client:
        port = find_free_port()
        url = f"http://{HOST}:{port}"
        argv = [str(fake_gcs_binary()), "-scheme", "http", "-host", HOST, "-port", str(port)]
        argv += [*(backend or ("-backend", "memory")), "-external-url", url]
        log = tmp_path / "logs" / f"gcs-{port}.log"
        health = f"{url}/storage/v1/b"
        proc, record = processes.start("gcs", argv, env={}, log=log, port=port, health_url=health)
        records.append(record)
        processes.wait_ready(proc, record, timeout_s=20)
        clients.append(emulator_storage_client("test-project", url))
        return clients[-1]

    yield start
    for client in clients:
        client.close()
    processes.stop(records)


def put(client: storage.Client, bucket: str, name: str, data: bytes, **metadata: str) -> int:
    blob = client.bucket(bucket).blob(name)
    blob.metadata = metadata or None
    blob.upload_from_string(data, content_type="image/png", if_generation_match=0)
    return int(blob.generation or 0)


def listing(client: storage.Client) -> dict[tuple[str, str], storage.Blob]:
    return {(b.bucket.name, b.name): b for bucket in client.list_buckets() for b in client.list_blobs(bucket)}


def test_every_legal_object_survives_a_save_and_restore_into_a_new_server(new_server, tmp_path):
    old = new_server()
    old.create_bucket("uploads")
    old.create_bucket("empty")
    long_name = "incoming/" + "n" * 947 + ".png"  # 960 bytes
    non_ascii = "incoming/фото 写真 " + "ü" * 200 + ".png"  # 600 bytes escaped 3x: over 255 as a file name
    deep = "[" * 2500 + "]" * 2500  # 5,000 bytes of metadata: over ext4's extended-attribute limit
    input_gen = put(old, "uploads", long_name, b"long")
    put(old, "uploads", non_ascii, b"same")
    put(old, "uploads", "incoming/deep.jpg", b"same", **{"samdrop-prompts": deep})
    put(old, "uploads", "incoming/gone.png", b"x")  # deleted below: its output's tag has no object
    gone_gen = int(old.bucket("uploads").get_blob("incoming/gone.png").generation)
    old.bucket("uploads").blob("incoming/gone.png").delete()
    put(old, "uploads", f"results/{long_name}/completion.json", b"{}", **{GENERATION_KEY: str(input_gen)})
    put(old, "uploads", "results/incoming/gone.png/completion.json", b"{}", **{GENERATION_KEY: str(gone_gen)})
    before = listing(old)
    folder = tmp_path / "gcs-snapshot"

    assert store_snapshot.save(old, folder) == 5
    new = new_server()
    report = store_snapshot.restore(new, folder)

    after = listing(new)
    assert report.objects == 5 and report.buckets == 2
    assert sorted(after) == sorted(before)
    assert {b.name for b in new.list_buckets()} == {"uploads", "empty"}
    for key, blob in before.items():
        restored = after[key]
        assert restored.download_as_bytes() == blob.download_as_bytes(), key
        assert restored.content_type == blob.content_type, key
        assert report.generations[int(blob.generation)] == int(restored.generation), key
        if key[1].endswith("completion.json"):
            continue
        assert restored.metadata == blob.metadata, key
    assert after[("uploads", "incoming/deep.jpg")].metadata == {"samdrop-prompts": deep}
    # A completion still names its input's (new) generation; one whose input is gone keeps the old
    # number, older than every restored object, as it would be after a new upload.
    new_input_gen = int(after[("uploads", long_name)].generation)
    assert after[("uploads", f"results/{long_name}/completion.json")].metadata == {
        GENERATION_KEY: str(new_input_gen)
    }
    orphan = after[("uploads", "results/incoming/gone.png/completion.json")]
    assert orphan.metadata == {GENERATION_KEY: str(gone_gen)}
    assert gone_gen < min(int(b.generation) for b in after.values())
    # Same content is stored once.
    assert len(list((folder / store_snapshot.CONTENT).iterdir())) == 3


def test_a_second_save_replaces_the_first_and_restoring_nothing_is_nothing(new_server, tmp_path):
    folder = tmp_path / "gcs-snapshot"
    empty = new_server()
    assert store_snapshot.restore(empty, folder) == store_snapshot.RestoreReport(0, 0, {})

    empty.create_bucket("bkt")
    put(empty, "bkt", "one.png", b"1")
    store_snapshot.save(empty, folder)
    empty.bucket("bkt").blob("one.png").delete()
    put(empty, "bkt", "two.png", b"2")
    store_snapshot.save(empty, folder)

    lines = (folder / store_snapshot.INDEX).read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["two.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gcs-snapshot", "logs"]  # no half-written ones
    restored = new_server()
    store_snapshot.restore(restored, folder)
    assert [b.name for b in restored.list_blobs("bkt")] == ["two.png"]


def test_a_damaged_snapshot_is_refused_with_what_to_do_and_kept(new_server, tmp_path):
    folder = tmp_path / "gcs-snapshot"
    source = new_server()
    source.create_bucket("bkt")
    put(source, "bkt", "one.png", b"1")
    store_snapshot.save(source, folder)
    [content] = (folder / store_snapshot.CONTENT).iterdir()
    content.write_bytes(b"changed")

    with pytest.raises(LocalStackError, match=r"does not hold the content it names.*local up --fresh"):
        store_snapshot.restore(new_server(), folder)
    assert content.read_bytes() == b"changed"  # nothing deleted: the user decides


def test_up_moves_what_the_old_filesystem_backend_kept_into_the_snapshot_once(new_server, tmp_path):
    settings = Settings.from_env({}, state_dir=tmp_path / "state")
    legacy = settings.state_dir / LEGACY_GCS_DIR
    old = new_server("-backend", "filesystem", "-filesystem-root", str(legacy))
    old.create_bucket("uploads")
    input_gen = put(
        old, "uploads", "incoming/cat.png", b"cat", **{"samdrop-prompts": '{"boxes":[[1,2,3,4]]}'}
    )
    put(old, "uploads", "results/incoming/cat.png/completion.json", b"{}", **{GENERATION_KEY: str(input_gen)})
    stack = LocalStack(settings)

    assert stack.migrate_legacy_store(str(fake_gcs_binary())) == 2
    assert not legacy.exists() and legacy.with_name("gcs.migrated").is_dir()
    assert stack.migrate_legacy_store(str(fake_gcs_binary())) == 0  # once
    new = new_server()
    store_snapshot.restore(new, stack.snapshot_dir)
    cat = new.bucket("uploads").get_blob("incoming/cat.png")
    assert cat.download_as_bytes() == b"cat" and cat.metadata == {"samdrop-prompts": '{"boxes":[[1,2,3,4]]}'}
    completion = new.bucket("uploads").get_blob("results/incoming/cat.png/completion.json")
    assert completion.metadata == {GENERATION_KEY: str(cat.generation)}
