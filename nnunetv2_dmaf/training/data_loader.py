"""DMAFDataLoader: nnU-Net's data loader that also hands each sample's case id to the transforms and
collates the per-sample modality masks they produce."""
from __future__ import annotations

import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class DMAFDataLoader(nnUNetDataLoader):
    """Drop-in replacement for ``nnUNetDataLoader`` (same constructor).

    nnU-Net applies the transforms once per sample, in the order of the selected keys, with only
    ``image`` and ``segmentation``. This loader adds ``case_id`` to that call (for per-case
    availability tables) and, if the transforms return ``modality_mask`` / ``available_mask``
    (bool [M]), adds them to the batch as bool [B, M]. Batches without masks look like nnU-Net's.
    """

    def __init__(self, *args, transforms=None, **kwargs):
        super().__init__(*args, transforms=None, **kwargs)
        self.sample_transforms = transforms
        self.transforms = None if transforms is None else self._transform_sample
        self._batch_keys: list = []
        self._batch_masks: list[dict] = []

    def get_indices(self):
        keys = super().get_indices()
        self._batch_keys = list(keys)
        self._batch_masks = []
        return keys

    def _transform_sample(self, **sample) -> dict:
        case_id = self._batch_keys[len(self._batch_masks)]
        out = self.sample_transforms(**sample, case_id=case_id)
        self._batch_masks.append({k: out[k] for k in ("modality_mask", "available_mask") if k in out})
        return out

    def generate_train_batch(self) -> dict:
        batch = super().generate_train_batch()
        if self.transforms is not None and self._batch_masks and self._batch_masks[0]:
            if len(self._batch_masks) != len(batch["keys"]):
                raise RuntimeError("DMAFDataLoader: transforms were not called once per sample")
            for key in self._batch_masks[0]:
                batch[key] = torch.stack([m[key] for m in self._batch_masks]).bool()
        return batch
