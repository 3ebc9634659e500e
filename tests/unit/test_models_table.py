"""The one table of model types (samdrop/models.py) and everything that reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.gcp.cli import _deployed_type
from predictor.backends import load_engine, resolve_model
from samdrop import models
from samdrop.errors import ConfigError
from samdrop.settings import Settings

from .test_deploy_cloud_plan import sample_options

ROOT = Path(__file__).resolve().parents[2]


def test_every_type_has_one_entry_and_a_known_family():
    assert len(models.BY_NAME) == len(models.MODELS)
    assert set(models.MODEL_TYPES) == {info.name for info in models.MODELS} | {"auto"}
    assert {info.family for info in models.MODELS} == set(models.FAMILIES)
    assert [info.name for info in models.MODELS if info.recommended] == [models.RECOMMENDED]
    assert [info.name for info in models.MODELS if info.deploy_default] == [models.DEPLOY_DEFAULT]
    assert models.names("sam2.1") == (
        "sam2.1_hiera_large", "sam2.1_hiera_base_plus", "sam2.1_hiera_small", "sam2.1_hiera_tiny"
    )  # fmt: skip
    for info in models.MODELS:
        assert (info.source is not None) == info.needs_weights
        assert info.prompts or info.text


def test_sam3_is_listed_gated_with_text():
    sam3 = models.model_info("sam3")
    assert (sam3.family, sam3.source, sam3.gated, sam3.text) == ("sam3", "facebook/sam3", True, True)
    assert models.text_models() == ("sam3",)
    assert "sam3" in models.text_refused("sam2.1_hiera_tiny")


def test_auto_prefers_the_newest_family_then_the_largest():
    order = models.auto_candidates()
    assert order.index("sam2.1_hiera_tiny") < order.index("vit_h")
    assert order.index("sam2.1_hiera_large") < order.index("sam2.1_hiera_tiny")
    assert "classic" not in order and "tiny" not in order


@pytest.mark.parametrize(
    ("name", "model_type"),
    [
        ("gs://m/sam/sam_vit_h_4b8939.pth", "vit_h"),
        ("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny"),
        ("/models/sam2.1_hiera_base_plus/", "sam2.1_hiera_base_plus"),
        ("gs://m/sam2.1-hiera-b+", "sam2.1_hiera_base_plus"),
        ("facebook/sam3", "sam3"),
        ("/models/my-model", None),
    ],
)
def test_type_from_name(name, model_type):
    assert models.type_from_name(name) == model_type


def test_unknown_types_are_refused_everywhere_with_the_list():
    with pytest.raises(ConfigError) as caught:
        Settings(model_type="sam2_tiny")
    assert "'sam2_tiny' is not a model type" in caught.value.message
    assert (
        "sam2.1_hiera_tiny" in caught.value.message
        and f"recommended: {models.RECOMMENDED}" in caught.value.message
    )
    with pytest.raises(ConfigError, match="--model-type 'sam2_tiny' is not a model type"):
        sample_options(model_type="sam2_tiny").validate()


def test_settings_and_deploy_take_sam2_types():
    Settings(model_type="sam2.1_hiera_tiny", checkpoint="/models/sam2")
    with pytest.raises(ConfigError, match="classic uses no weights"):
        Settings(model_type="classic", checkpoint="/models/sam2")
    sample_options(model_type="sam2.1_hiera_small", checkpoint=None).validate()  # staged from its repo
    sample_options(model_type="sam3", checkpoint=None).validate()  # staged with the deployer's HF_TOKEN
    assert _deployed_type("auto", "gs://m/sam2.1-hiera-large/") == "sam2.1_hiera_large"


def test_resolution_keeps_hf_types_without_a_file(tmp_path):
    settings = Settings(model_type="sam2.1_hiera_tiny", cache_dir=tmp_path)
    assert resolve_model(settings).checkpoint is None
    named = Settings(checkpoint="/models/sam2.1-hiera-small", cache_dir=tmp_path)
    assert resolve_model(named).model_type == "sam2.1_hiera_small"
    with pytest.raises(ConfigError, match="cannot tell the model type"):
        resolve_model(Settings(checkpoint="/models/mine", cache_dir=tmp_path))


def test_auto_reads_the_backbone_of_a_folder_its_name_does_not_explain(tmp_path):
    from transformers import Sam2Config

    for hidden, blocks, model_type in (
        (112, [2, 3, 16, 3], "sam2.1_hiera_base_plus"),
        (96, [1, 2, 7, 2], "sam2.1_hiera_tiny"),
    ):
        folder = tmp_path / f"mine-{hidden}-{len(blocks)}-{blocks[2]}"
        backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": hidden, "blocks_per_stage": blocks}
        Sam2Config(
            vision_config={"model_type": "sam2_vision_model", "backbone_config": backbone}
        ).save_pretrained(folder)
        assert resolve_model(Settings(checkpoint=str(folder), cache_dir=tmp_path)).model_type == model_type
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="cannot tell the model type"):
        resolve_model(Settings(checkpoint=str(tmp_path / "other"), cache_dir=tmp_path))


def test_a_missing_sam2_checkpoint_says_what_a_checkpoint_is(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.json and model\.safetensors"):
        load_engine(Settings(model_type="sam2.1_hiera_tiny", checkpoint=str(tmp_path / "none")))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"lacks model\.safetensors"):
        load_engine(Settings(model_type="sam2.1_hiera_tiny", checkpoint=str(tmp_path / "half")))


def test_the_table_and_settings_import_without_torch():
    code = "import sys, samdrop.models, samdrop.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


class _FakeBlob:
    def __init__(self, name: str, data: bytes, downloads: list[str]) -> None:
        self.name, self._data, self._downloads = name, data, downloads

    def download_to_filename(self, filename: str, timeout: float = 0) -> None:
        self._downloads.append(self.name)
        Path(filename).write_bytes(self._data)


class _FakeStorage:
    """Just what a gs:// checkpoint folder needs of ``google.cloud.storage.Client``."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.downloads: list[str] = []

    def __call__(self) -> _FakeStorage:
        return self

    def list_blobs(self, bucket: str, prefix: str, delimiter: str, timeout: float) -> list[_FakeBlob]:
        names = [n for n in self.objects if n.startswith(prefix) and "/" not in n[len(prefix) :]]
        return [_FakeBlob(n, self.objects[n], self.downloads) for n in names]

    def bucket(self, name: str) -> _FakeStorage:
        return self

    def blob(self, name: str) -> _FakeBlob:
        return _FakeBlob(name, self.objects[name], self.downloads)


def test_a_gs_folder_checkpoint_is_copied_once_and_serves(tmp_path, monkeypatch, coffee):
    from predictor.engine import Job
    from predictor.instances import Prompts
    from tests.sam2_models import write_tiny_sam2

    folder = write_tiny_sam2(tmp_path / "saved")
    fake = _FakeStorage({f"models/sam2/{p.name}": p.read_bytes() for p in folder.iterdir()})
    fake.objects["models/sam2/extra/ignored.bin"] = b"not in the folder itself"
    monkeypatch.setattr("google.cloud.storage.Client", fake)
    settings = Settings(model_type="sam2.1_hiera_tiny", checkpoint="gs://b/models/sam2/", cache_dir=tmp_path)
    engine = load_engine(settings, random_weights=True)
    assert engine.description["checkpoint"] == "gs://b/models/sam2/"
    boxes = np.array([[10, 10, 90, 90]], np.float32)
    result = engine.run([Job(coffee, Prompts(boxes=boxes))])
    assert result[0].masks[0].rle["size"] == [400, 600]
    assert sorted(fake.downloads) == ["models/sam2/config.json", "models/sam2/model.safetensors"]
    load_engine(settings)  # from the cache: nothing downloaded again
    assert len(fake.downloads) == 2


def test_text_is_refused_by_models_that_take_none():
    from predictor.instances import check_model_takes, parse_instance
    from samdrop.errors import InvalidRequest

    text = parse_instance({"text": "a cup", "gcs_uri": "gs://b/a.png"}).prompts
    points = parse_instance({"points": [[1, 1]], "gcs_uri": "gs://b/a.png"}).prompts
    for model_type in ("vit_b", "sam2.1_hiera_tiny", "classic", "tiny"):
        with pytest.raises(InvalidRequest, match="text concepts need sam3") as caught:
            check_model_takes(text, model_type)
        assert caught.value.code == "invalid_request" and model_type in caught.value.message
        check_model_takes(points, model_type)
        check_model_takes(None, model_type)
    check_model_takes(text, "sam3")


@pytest.mark.parametrize(("prompts", "what"), [({"points": [[1, 1]]}, "points and boxes"), ({}, "automatic")])
def test_sam3_refuses_anything_but_text(prompts, what):
    from predictor.instances import check_model_takes, parse_instance
    from samdrop.errors import InvalidRequest

    instance = parse_instance({**prompts, "gcs_uri": "gs://b/a.png"})
    words = f"sam3 segments text concepts only and cannot make {what}.*SAM 2.1"
    with pytest.raises(InvalidRequest, match=words):
        check_model_takes(instance.prompts, "sam3")


def test_amg_used_fills_the_family_threshold_and_keeps_a_given_one():
    from samdrop.models import amg_used

    assert amg_used({"pred_iou_thresh": None, "points_per_side": 8}, "tiny") == {
        "pred_iou_thresh": 0.88,
        "points_per_side": 8,
    }
    assert amg_used({"pred_iou_thresh": None}, "sam2.1_hiera_tiny") == {"pred_iou_thresh": 0.8}
    assert amg_used({"pred_iou_thresh": 0.5}, "sam2.1_hiera_tiny") == {"pred_iou_thresh": 0.5}
    assert amg_used({"pred_iou_thresh": None}, "classic") == {"pred_iou_thresh": None}  # not applied
    assert amg_used(None, "vit_b") is None
