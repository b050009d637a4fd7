"""Key padding masks as the additive attention bias that ``F.scaled_dot_product_attention`` takes."""
from __future__ import annotations

import torch


def key_padding_bias(ignored_keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, N] (True = key never attended to) -> additive bias [B, 1, 1, N]: 0 for attended keys,
    -inf for ignored ones (broadcasts over heads and queries)."""
    b, n = ignored_keys.shape
    return torch.zeros((b, n), dtype=dtype, device=ignored_keys.device) \
        .masked_fill_(ignored_keys, float("-inf")).view(b, 1, 1, n)
