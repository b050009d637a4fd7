"""Rebalanced single-modality fusion: the fusion decoder also learns to decode ONE rare modality.

Why: the fusion decoder only ever sees the features the DMAF fusion gives it. Under imbalanced
missingness a rare modality (T2, missing in 80 % of the BraTS mr2468 cases) is almost never the only
one fused, so at inference with that modality alone the fusion decoder gets features it was hardly
trained on. The quality benchmark showed it: with T2 alone the fusion decoder scored Dice 0.10-0.39
at 100 epochs while the shared uni-modal decoder, run on the SAME T2 encoder features, scored
0.44-0.58 (docs/benchmarks.md).

What: per training sample with at least two present modalities, with probability ``probability``
the FUSION keeps only one of them, chosen with probability proportional to 1 / (that modality's
presence frequency in training): rare modalities are picked most. Everything else is unchanged:
every present modality still runs through its encoder, the shared uni-modal decoder and its
uni-modal loss. The fused feature of such a sample is one modality's feature, not a teacher, so its
pairs take no part in the distillation (see nnUNetTrainerDMAF.train_step).

Not in the authors' figures (which leave the training masks open); documented in
docs/training_method.md, judged by the quality benchmark.
"""
from __future__ import annotations

import numpy as np
import torch

from nnunetv2_dmaf.training.modality_dropout import ModalityDropoutConfig


def presence_frequencies(config: ModalityDropoutConfig, case_ids: list[str] | None = None,
                         case_probabilities: np.ndarray | None = None) -> np.ndarray:
    """Expected fraction of training samples in which each modality is present, [M]: the table's
    availability over ``case_ids`` (all rows if None; 1 without a table), averaged uniformly or with
    ``case_probabilities`` (one per entry of ``case_ids``), times 1 - missing rate."""
    m = len(config.channel_names)
    if config.availability is None:
        available = np.ones(m)
    else:
        keys = list(config.availability) if case_ids is None else [k for k in case_ids if k in config.availability]
        rows = np.stack([config.availability[k] for k in keys]).astype(np.float64) if keys else np.ones((1, m))
        available = rows.mean(0) if case_probabilities is None or not keys else np.asarray(case_probabilities) @ rows
    return available * (1.0 - np.asarray(config.missing_rates, dtype=np.float64))


def inverse_frequencies(frequencies: np.ndarray) -> np.ndarray:
    """[M] 1 / frequency, 0 for a modality that is never present (frequency 0)."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    return np.where(frequencies > 0, 1.0 / np.maximum(frequencies, 1e-12), 0.0)


class SingleModalityFusionSampler:
    """Draws the fusion mask of a training batch.

    Args:
        frequencies: [M] presence frequencies (see :func:`presence_frequencies`); a modality that is
            never present (0) is never chosen.
        probability: chance that a sample with >= 2 present modalities is fused from one of them.
    """

    def __init__(self, frequencies: np.ndarray, probability: float):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"single-modality fusion probability must be in [0, 1], got {probability}")
        self.probability = probability
        self.choice_weights = inverse_frequencies(frequencies)

    def __call__(self, modality_mask: torch.Tensor, rng: np.random.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """bool [B, M] (CPU, present modalities) -> (fusion mask bool [B, M], reduced bool [B]).

        Uses numpy's global RNG by default (seeded by nnU-Net / ``nnUNet_dmaf_seed``)."""
        mask = modality_mask.bool().cpu().numpy()
        fusion = mask.copy()
        reduced = np.zeros(mask.shape[0], dtype=bool)
        if self.probability > 0:
            source = np.random if rng is None else rng
            for b in range(mask.shape[0]):
                weights = self.choice_weights * mask[b]
                if mask[b].sum() < 2 or weights.sum() <= 0 or source.random() >= self.probability:
                    continue
                chosen = int(source.choice(len(weights), p=weights / weights.sum()))
                fusion[b] = False
                fusion[b, chosen] = True
                reduced[b] = True
        return torch.from_numpy(fusion), torch.from_numpy(reduced)
