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

``--fusion_weight W`` (0 to 1, default 0) blends in the fusion decoder: the prediction is
``W * fusion logits + (1 - W) * uni-modal mean``; 0.5 is the plain mean of the two decoders, 1 the
fusion decoder alone (what ``nnUNetv2_dmaf_evaluate_subsets`` gives).

Works with checkpoints of every DMAF-Net implementation of this repository whose features carry
``pair_index_host`` (run it with the interpreter that has the checkpoint's code installed).
"""
from __future__ import annotations

import argparse
import sys
import types

import torch

from nnunetv2_dmaf.evaluation import subset_evaluation
from nnunetv2_dmaf.inference.predictor import DMAFPredictor
from nnunetv2_dmaf.user_errors import DataError, run_main


def unimodal_forward(self, x: torch.Tensor, modality_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, M, *S] -> mean over the present modalities of the uni-modal decoder's full-resolution
    logits [B, K, *S], blended with the fusion decoder's by ``self.diagnostic_fusion_weight``."""
    mask = self.check_inputs(x, modality_mask).cpu()
    fusion, features = type(self).forward(self, x, modality_mask, return_features=True)
    logits = features.unimodal_logits[0]
    total = logits.new_zeros((x.shape[0],) + tuple(logits.shape[1:]))
    count = torch.zeros(x.shape[0])
    for row, (sample, modality) in enumerate(features.pair_index_host.tolist()):
        if mask[sample, modality]:
            total[sample] += logits[row]
            count[sample] += 1
    unimodal = total / count.clamp_min(1).to(total).view(-1, *([1] * (total.ndim - 1)))
    weight = self.diagnostic_fusion_weight
    if weight in (0, 1):
        return fusion if weight == 1 else unimodal
    return weight * fusion + (1 - weight) * unimodal


def use_unimodal_decoder(predictor: DMAFPredictor, fusion_weight: float) -> DMAFPredictor:
    """Makes ``predictor``'s network predict with :func:`unimodal_forward` (this instance only)."""
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    if getattr(network, "unimodal_decoder", None) is None:
        raise DataError(f"{predictor.trainer_name}: the network has no uni-modal decoder")
    network.forward = types.MethodType(unimodal_forward, network)
    network.diagnostic_fusion_weight = fusion_weight
    return predictor


def fusion_weight_arg(value: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value!r}") from None
    if not 0 <= weight <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return weight


def diagnostic_parser() -> argparse.ArgumentParser:
    """nnUNetv2_dmaf_evaluate_subsets' parser under this script's name, plus --fusion_weight."""
    parser = subset_evaluation.build_parser()
    parser.prog = "unimodal_decoder_diagnostic.py"
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--fusion_weight", type=fusion_weight_arg, default=0.0,
                        help="weight of the fusion decoder's logits blended with the uni-modal mean (default 0)")
    return parser


def diagnostic_main(argv: list[str]) -> int:
    """nnUNetv2_dmaf_evaluate_subsets with the uni-modal decoder (blended by --fusion_weight); the blend
    is part of the run settings, so that --continue never mixes blends (or continues a plain evaluation)."""
    args = diagnostic_parser().parse_args(argv)
    weight = args.fusion_weight
    return subset_evaluation.evaluate_command(
        args, adapt_predictor=lambda predictor: use_unimodal_decoder(predictor, weight),
        extra_settings={"diagnostic": {"decoder": "uni-modal mean", "fusion_weight": weight}})


if __name__ == "__main__":
    run_main(diagnostic_main, sys.argv[1:])
