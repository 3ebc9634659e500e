from __future__ import annotations

import pytest
import torch

from predictor import hardware


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"avx512": True, "avx512_bf16": True, "amx": False}, "bf16"),
        ({"avx512": True, "avx512_bf16": True, "amx": True}, "bf16"),
        ({"avx512": True, "avx512_bf16": False, "amx": False}, "fp32"),
        ({"avx512": False, "avx512_bf16": False, "amx": False}, "fp32"),
    ],
)
def test_auto_precision_follows_the_cpu(monkeypatch, features, expected):
    monkeypatch.setattr(hardware, "cpu_features", lambda: features)
    assert hardware.resolve_precision("auto", torch.device("cpu")) == expected
    assert hardware.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert hardware.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_compile_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert hardware.resolve_compile("on", cpu) is True
    assert hardware.resolve_compile("off", cpu) is False
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert hardware.resolve_compile("auto", cpu) is False  # no C++ compiler for Inductor
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    assert hardware.resolve_compile("auto", cpu) is True
    assert hardware.resolve_compile("auto", torch.device("cuda")) is False  # until gpu.sh shows a win


def test_sam2_encodes_one_image_per_pass_on_a_cpu_and_batches_on_a_gpu():
    assert hardware.encoder_images_per_pass(4, torch.device("cpu")) == 1
    assert hardware.encoder_images_per_pass(4, torch.device("cuda")) == 4


def test_compile_cache_goes_under_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    target = hardware.use_compile_cache(tmp_path)
    assert target == tmp_path / "inductor" and target.is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert hardware.use_compile_cache(tmp_path) == tmp_path / "mine"


def test_cpu_is_named():
    assert hardware.cpu_name()
    assert set(hardware.cpu_features()) == {"avx512", "avx512_bf16", "amx"}
