"""Diagnostic: how good is each modality's own pathway? Evaluates a DMAF-Net checkpoint over every
modality subset with the SHARED UNI-MODAL decoder instead of the fusion decoder.

The prediction for a subset is the mean of the uni-modal decoder's logits over the present
modalities (for one modality: that modality's uni-modal output). Everything else is
``nnUNetv2_dmaf_evaluate_subsets`` (same arguments, same outputs). Comparing the two evaluations of
the same checkpoint separates "the modality's encoder features carry the information" from "the
fusion decoder can decode them": docs/training_method.md section 3b.

Usage (the arguments of nnUNetv2_dmaf_evaluate_subsets)::

    python benchmarks/unimodal_decoder_diagnostic.py -i imagesTs -l labelsTs -o eval_unimodal -d 995 \\
        -c 3d_quality -f 0 -tr nnUNetTrainerDMAF -chk checkpoint_final.pth --disable_tta -device cpu

Works with checkpoints of every DMAF-Net implementation of this repository whose features carry
``pair_index_host`` (run it with the interpreter that has the checkpoint's code installed).
"""
from __future__ import annotations

import sys
import types

import torch

import nnunetv2_dmaf.inference.predictor as predictor_module
from nnunetv2_dmaf.evaluation import subset_evaluation


def unimodal_forward(self, x: torch.Tensor, modality_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, M, *S] -> mean over the present modalities of the uni-modal decoder's full-resolution
    logits [B, K, *S]."""
    mask = self.check_inputs(x, modality_mask).cpu()
    _, features = type(self).forward(self, x, modality_mask, return_features=True)
    logits = features.unimodal_logits[0]
    total = logits.new_zeros((x.shape[0],) + tuple(logits.shape[1:]))
    count = torch.zeros(x.shape[0])
    for row, (sample, modality) in enumerate(features.pair_index_host.tolist()):
        if mask[sample, modality]:
            total[sample] += logits[row]
            count[sample] += 1
    return total / count.clamp_min(1).to(total).view(-1, *([1] * (total.ndim - 1)))


def unimodal_predictor(*args, **kwargs):
    predictor = build_predictor(*args, **kwargs)
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    if getattr(network, "unimodal_decoder", None) is None:
        raise SystemExit(f"{predictor.trainer_name}: the network has no uni-modal decoder")
    network.forward = types.MethodType(unimodal_forward, network)
    return predictor


build_predictor = predictor_module.load_predictor

if __name__ == "__main__":
    predictor_module.load_predictor = unimodal_predictor  # read by subset_evaluation at call time
    subset_evaluation.main(sys.argv[1:])
