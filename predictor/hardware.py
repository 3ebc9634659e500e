"""What this machine runs fast: bf16 support, the CPU's name, and whether compiling can work.

``SAMDROP_PRECISION=auto`` picks bf16 where the hardware runs it natively — CUDA devices with bf16,
and CPUs with AMX or AVX512-BF16 (on those the encoder runs 1.7-3x faster) — and fp32 elsewhere,
where bf16 would be emulated and slower. ``SAMDROP_COMPILE=auto`` compiles the automatic-mask
decoder on CPUs (``benchmarks/amg_bench.py`` measured it 4x faster there); on CUDA it stays off
until ``benchmarks/gpu.sh`` shows a win.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), for benchmark figures and responses."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> dict[str, bool]:
    """The CPU features that decide precision and kernels."""
    return {
        "avx512": torch.cpu._is_avx512_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
    }


def machine_record(device: torch.device) -> dict[str, object]:
    """What a benchmark's figures were measured on: CPU (name and features), threads, GPU, versions."""
    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        features = cpu_features()
        return features["amx"] or features["avx512_bf16"]
    return False


def resolve_precision(preference: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; other values as given."""
    if preference == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return preference


def resolve_compile(preference: str, device: torch.device) -> bool:
    """Whether to ``torch.compile`` the automatic-mask decoder on ``device``."""
    if preference in ("on", "off"):
        return preference == "on"
    # Inductor's CPU backend builds C++: without a compiler there is nothing to gain.
    return device.type == "cpu" and (shutil.which("c++") or shutil.which("g++")) is not None


def encoder_images_per_pass(batch_size: int, device: torch.device) -> int:
    """Images per image-encoder pass (SAM 2.1's Hiera, SAM 3's ViT): up to ``batch_size`` on a GPU,
    one on a CPU. On a CPU a batch gains no arithmetic efficiency and its activations outgrow the
    last-level cache (hiera tiny: 12 MiB per image at the first stage). On a 2-core Zen 4
    (``docs/benchmarks.md``): hiera tiny, three 1024 px images, 5.2-5.8 s in single passes against
    6.3-7.6 s in one (bf16 autocast), and with :class:`~predictor.sam2_encoder.Sam2FastEncoder`
    9.3-10.7 CPU seconds against 10.8-11.4; SAM 3's 32-layer ViT (bf16), two photos, 46.5-48.0 s
    one at a time against 52.9-56.2 s in one pass."""
    return batch_size if device.type == "cuda" else 1


def use_compile_cache(cache_dir: Path) -> Path:
    """Keep Inductor's compiled kernels under ``cache_dir`` so a new process reuses them (a cold
    compile takes tens of seconds; a warm start a few). An explicit ``TORCHINDUCTOR_CACHE_DIR`` wins."""
    target = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor")))
    target.mkdir(parents=True, exist_ok=True)
    return target
