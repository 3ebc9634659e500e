"""``nn.Linear`` with its bias, a following GELU or a residual add done inside the matrix product.

On a CPU, ``F.linear`` with a bias first copies the bias into every row of the output and then
accumulates the product onto it, and a GELU or a residual add after it is another full pass over
the output. In SAM 2.1's image encoder (hiera tiny, bf16, 2 Zen 4 cores) those passes were a fifth
of the linears' time. oneDNN (``torch.ops.mkldnn._linear_pointwise``, what Inductor emits for the
same pattern) applies bias, GELU or the add to each tile of the product while it is in cache. Where
oneDNN is not there (CUDA, a build without it) the same function is the plain sequence of ops.

Values: the same maths; in bf16 the fused add rounds once instead of twice (bf16 noise).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def fused(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused linears run on ``x``: a CPU tensor, fp32, or bf16 where the CPU has
    oneDNN's bf16 kernels (AVX-512 or newer; ``SAMDROP_PRECISION=bf16`` may be forced elsewhere)."""
    return fused_on(x.dtype, x.device)


def fused_on(dtype: torch.dtype, device: torch.device) -> bool:
    """:func:`fused` for tensors of ``dtype`` on ``device``."""
    if device.type != "cpu" or not _onednn():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _onednn_bf16())


@functools.cache
def _onednn() -> bool:
    return bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


@functools.cache
def _onednn_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def linear(
    x: torch.Tensor, layer: nn.Linear, *, gelu: bool = False, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``layer(x)``, then exact (erf) GELU when ``gelu``, plus ``residual`` (shaped as the output)
    when given; ``x``: ``...xK`` -> ``...xN``."""
    if gelu and residual is not None:
        raise ValueError("a fused linear takes a GELU or a residual, not both")
    if not fused(x):
        out = F.linear(x, layer.weight, layer.bias)
        if gelu:
            return F.gelu(out)
        return out if residual is None else out + residual
    x = x.contiguous()
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(  # type: ignore[no-any-return]
            x, residual.contiguous(), layer.weight, layer.bias, "add"
        )
    attr, algorithm = _ONEDNN["gelu" if gelu else None]
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, attr, [], algorithm)  # type: ignore[no-any-return]


class PackedLinear:
    """A linear's weight and bias copied to ``dtype`` once, for a layer that runs on many rows: in
    bf16 where :func:`fused_on` holds, the weight is also reordered once into oneDNN's blocked layout
    (``rows``: the row count it is tuned for; any count runs), which the product would otherwise
    redo on every call (5-8% of a ViT-L sized product on a Zen 4 core), and the activation is
    fused. Elsewhere the plain ops."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype, rows: int) -> None:
        self.bias = bias.detach().to(dtype).contiguous()
        weight = weight.detach().to(dtype).contiguous()
        self.packed = dtype == torch.bfloat16 and fused_on(dtype, weight.device)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if self.packed else weight

    def __call__(self, x: torch.Tensor, *, activation: str | None = None) -> torch.Tensor:
        """``activation``: None, ``"gelu"`` (exact) or ``"relu"``, applied to the product."""
        if not self.packed:
            out = F.linear(x, self.weight, self.bias)
            return out if activation is None else _PLAIN[activation](out)
        flat = x.reshape(-1, x.shape[-1])
        attr, algorithm = _ONEDNN[activation]
        product: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            flat, self.weight, self.bias, attr, [], algorithm
        )
        return product.view(*x.shape[:-1], -1)


# oneDNN's (post-op, algorithm) for each activation linear and PackedLinear fuse, and the plain op.
_ONEDNN = {None: ("none", ""), "gelu": ("gelu", "none"), "relu": ("relu", "")}
_PLAIN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "relu": F.relu}
