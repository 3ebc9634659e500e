"""``samdrop models list|pull`` against a local mirror."""

from __future__ import annotations

from deploy.command import main
from tests.weights_server import serve


def test_pull_fetches_from_the_mirror_and_list_shows_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMDROP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SAMDROP_MODEL_TYPE", raising=False)
    monkeypatch.delenv("SAMDROP_CHECKPOINT", raising=False)
    with serve({"/sam/sam_vit_b_01ec64.pth": b"weights"}) as server:
        monkeypatch.setenv("SAMDROP_WEIGHTS_URL", f"{server.base_url}/sam")
        assert main(["models", "list"]) == 0
        before = capsys.readouterr().out
        assert main(["models", "pull", "vit_b"]) == 0
        pulled = capsys.readouterr().out
    assert "vit_b    no" in before and "serves: classic" in before and "samdrop models pull vit_b" in before
    assert (tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth").read_bytes() == b"weights"
    assert str(tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth") in pulled
    assert main(["models", "list"]) == 0
    after = capsys.readouterr().out
    assert "vit_b    yes" in after and "serves: vit_b" in after


def test_pull_offline_names_the_file_to_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMDROP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SAMDROP_WEIGHTS_URL", "http://127.0.0.1:9/sam/")
    assert main(["models", "pull", "vit_h"]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "checkpoints" / "sam_vit_h_4b8939.pth") in error
