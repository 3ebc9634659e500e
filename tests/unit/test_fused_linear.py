"""predictor.fused_linear against the unfused ops it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from predictor import fused_linear
from predictor.fused_linear import PackedLinear, linear


def _case(dtype: torch.dtype) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    layer = nn.Linear(24, 40).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 24, generator=generator) * 0.3)
        layer.bias.copy_(torch.randn(40, generator=generator))
    # A non-contiguous input, as a transposed view gives it.
    x = torch.randn(2, 24, 7, 5, generator=generator).to(dtype).transpose(1, 3)
    residual = torch.randn(2, 5, 7, 40, generator=generator).to(dtype)
    return layer, x, residual


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_linear_then_gelu_or_add(monkeypatch, dtype, tolerance, fused):
    if fused and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(fused_linear, "fused", lambda x: fused)
    layer, x, residual = _case(dtype)
    with torch.inference_mode():
        plain = F.linear(x.float(), layer.weight.float(), layer.bias.float())
        cases = [
            (linear(x, layer), plain),
            (linear(x, layer, gelu=True), F.gelu(plain)),
            (linear(x, layer, residual=residual), plain + residual.float()),
        ]
    for ours, expected in cases:
        assert ours.shape == (2, 5, 7, 40) and ours.dtype == dtype
        scale = float(expected.abs().max())
        torch.testing.assert_close(ours.float(), expected, rtol=tolerance, atol=tolerance * scale)


def test_unfused_where_onednn_cannot_run_it():
    """Tensors off the CPU (here on the meta device) and dtypes without oneDNN kernels take the
    plain ops."""
    assert not fused_linear.fused(torch.zeros(2, 2, dtype=torch.float16, device="meta"))
    assert not fused_linear.fused(torch.zeros(2, 2, dtype=torch.float64))
    layer, x, _ = _case(torch.float64)
    torch.testing.assert_close(linear(x, layer, gelu=True), F.gelu(F.linear(x, layer.weight, layer.bias)))


def test_gelu_and_residual_together_are_refused():
    layer, x, residual = _case(torch.float32)
    with pytest.raises(ValueError, match="not both"):
        linear(x, layer, gelu=True, residual=residual)


@pytest.mark.skipif(
    not fused_linear.fused_on(torch.bfloat16, torch.device("cpu")), reason="no oneDNN bf16 on this CPU"
)
@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_packed_weights_give_the_plain_linear(activation: str | None):
    """oneDNN's reordered bf16 weight (bias and exact GELU or ReLU fused) gives F.linear's values,
    for the row count it was packed for and any other."""
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(48, 32, generator=generator), torch.randn(48, generator=generator)
    packed = PackedLinear(weight, bias, torch.bfloat16, rows=64)
    assert packed.packed
    for rows in (64, 7):
        x = torch.randn(1, rows, 32, generator=generator).bfloat16()
        plain = F.linear(x, weight.bfloat16(), bias.bfloat16())
        plain = {None: plain, "gelu": F.gelu(plain), "relu": F.relu(plain)}[activation]
        ours = packed(x, activation=activation)
        assert ours.shape == plain.shape and ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), plain.float(), rtol=1e-2, atol=2e-2)


def test_packed_is_plain_in_fp32():
    generator = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(8, 4, generator=generator), torch.randn(8, generator=generator)
    packed = PackedLinear(weight, bias, torch.float32, rows=16)
    x = torch.randn(3, 4, generator=generator)
    assert not packed.packed
    torch.testing.assert_close(packed(x, activation="gelu"), F.gelu(F.linear(x, weight, bias)))
    torch.testing.assert_close(packed(x, activation="relu"), F.relu(F.linear(x, weight, bias)))
