"""Non-overlapping window attention's layout: cut ``BxHxWxC`` into windows and put them back.

Both ViT encoders with windowed attention (SAM 2.1's Hiera, :mod:`predictor.sam2_encoder`; SAM 3's
ViT, :mod:`predictor.sam3_vision`) pad, cut and restore the same way as transformers does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``BxHxWxC`` -> ``(B*windows) x window x window x C`` (zero-padded), and the padded size."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    x = x.view(batch, rows, window, cols, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, channels), (height + pad_h, width + pad_w)


def unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """The inverse of :func:`partition`, padding removed."""
    rows, cols = padded[0] // window, padded[1] // window
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, padded[0], padded[1], -1)
    if padded != size:
        x = x[:, : size[0], : size[1]]
    return x.contiguous()
