"""Rebalanced case sampling: training cases that carry a rare modality are drawn more often.

Why: every modality has its own encoder, and an encoder learns only from the samples in which its
modality is present. Under imbalanced missingness the rare modality's encoder sees few samples (T2:
5 of the 32 fold-0 training cases of the quality benchmark, 16 % of the draws). With rebalanced
single-modality fusion the fusion decoder decodes T2 alone as well as T2's own uni-modal pathway
does, but that pathway stayed below the channel-dropout U-Net, whose shared encoder learns from every
case (docs/benchmarks.md, section 4).

What: nnU-Net's training loader draws cases uniformly. Here case ``i`` is drawn with probability
proportional to ``max over its available modalities m of (1 / f_m) ** exponent``, where ``f_m`` is
modality m's presence frequency over the training cases (table availability times 1 - missing
rate, :func:`~nnunetv2_dmaf.training.fusion_rebalancing.presence_frequencies`). A case is weighted by
its rarest modality; with ``exponent`` 1 on the benchmark table T2 goes from 16 % to 41 % of the
draws, FLAIR from 41 % to 56 %, T1 from 88 % to 79 %, T1ce stays at 75-77 %. Validation is unchanged.

Without an availability table every case has the same modalities, so the sampling stays uniform.
Not in the authors' figures (their data loader is not described); documented in
docs/training_method.md, judged by the quality benchmark.
"""
from __future__ import annotations

import numpy as np

from nnunetv2_dmaf.training.fusion_rebalancing import inverse_frequencies, presence_frequencies
from nnunetv2_dmaf.training.modality_dropout import ModalityDropoutConfig


def rebalanced_case_probabilities(config: ModalityDropoutConfig, case_ids: list[str],
                                  exponent: float) -> np.ndarray | None:
    """Sampling probability of each case in ``case_ids`` (same order), float64 [N] summing to 1, or
    None where the sampling stays uniform (no table, ``exponent`` 0, or equal weights).

    Raises ValueError for a negative exponent."""
    if exponent < 0:
        raise ValueError(f"case rebalancing exponent must be >= 0, got {exponent}")
    if exponent == 0 or config.availability is None or not case_ids:
        return None
    rarity = inverse_frequencies(presence_frequencies(config, case_ids)) ** exponent
    available = np.stack([np.asarray(config.availability[c], dtype=bool) for c in case_ids])  # [N, M]
    weights = np.where(available, rarity[None], 0.0).max(1)  # a case counts as its rarest modality
    weights = np.where(weights > 0, weights, rarity[rarity > 0].min() if (rarity > 0).any() else 1.0)
    if np.allclose(weights, weights[0]):
        return None
    return weights / weights.sum()

