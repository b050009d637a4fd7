"""nnU-Net experiment planners that size patch and batch for DMAF-Net instead of nnU-Net's U-Net.

nnU-Net's planners shrink the patch (then choose the batch size) until the network's
``compute_conv_feature_map_size`` fits a reference budget for the GPU memory target. They build the
plain U-Net for that estimate; these subclasses build :class:`DMAFNet` from the same architecture
entry (modality encoders, fusion, both decoders; see ``DMAFNet.compute_conv_feature_map_size``), so a
planned configuration fits the same memory target with ``-tr nnUNetTrainerDMAF``. Everything else
(spacing, topology, normalisation, network class) is nnU-Net's.

nnU-Net looks planners up by name inside the nnunetv2 package only, so ``nnUNetv2_plan_experiment
-pl`` cannot find these; ``nnUNetv2_dmaf_plan_experiment`` runs them through nnU-Net's own
``plan_experiment_dataset`` with nnUNetv2_plan_experiment's options. Plans are written as
``nnUNetDMAFPlans`` (``nnUNetResEncUNet{M,L,XL}DMAFPlans``); then ``nnUNetv2_preprocess -plans_name
...`` and ``nnUNetv2_train ... -tr nnUNetTrainerDMAF -p ...`` as usual.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)

from nnunetv2_dmaf.architecture.dmaf_net import build_dmaf_net_from_plans
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.user_errors import DataError, UsageError, run_main


def estimate_dmaf_feature_map_size(patch_size: Sequence[int], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Sequence[str]) -> np.int64:
    """nnU-Net's ``static_estimate_VRAM_usage`` for DMAF-Net (default options, deep supervision)."""
    net = build_dmaf_net_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, input_channels,
                                    output_channels, deep_supervision=True)
    return net.compute_conv_feature_map_size(patch_size)


class DMAFSizing:
    """Planner mixin: the memory estimate of DMAF-Net, and plans written under ``default_plans_name``
    unless a plans name is given (so that nnU-Net's own plans are never overwritten)."""

    default_plans_name: str = "nnUNetDMAFPlans"
    static_estimate_VRAM_usage = staticmethod(estimate_dmaf_feature_map_size)

    def __init__(self, dataset_name_or_id: str | int, *args, **kwargs):
        if len(args) < 3:  # (gpu_memory_target_in_gb, preprocessor_name, plans_name, ...) positionally
            kwargs.setdefault("plans_name", self.default_plans_name)
        super().__init__(dataset_name_or_id, *args, **kwargs)


class nnUNetPlannerDMAF(DMAFSizing, ExperimentPlanner):
    """nnU-Net's default planner (PlainConvUNet, 8 GB), sized for DMAF-Net."""


class nnUNetPlannerResEncMDMAF(DMAFSizing, nnUNetPlannerResEncM):
    """nnU-Net's ResEnc M preset (8 GB), sized for DMAF-Net."""

    default_plans_name = "nnUNetResEncUNetMDMAFPlans"


class nnUNetPlannerResEncLDMAF(DMAFSizing, nnUNetPlannerResEncL):
    """nnU-Net's ResEnc L preset (24 GB), sized for DMAF-Net."""

    default_plans_name = "nnUNetResEncUNetLDMAFPlans"


class nnUNetPlannerResEncXLDMAF(DMAFSizing, nnUNetPlannerResEncXL):
    """nnU-Net's ResEnc XL preset (40 GB), sized for DMAF-Net."""

    default_plans_name = "nnUNetResEncUNetXLDMAFPlans"


PLANNERS = {cls.__name__: cls for cls in (nnUNetPlannerDMAF, nnUNetPlannerResEncMDMAF, nnUNetPlannerResEncLDMAF,
                                          nnUNetPlannerResEncXLDMAF)}


def _main(argv: Sequence[str] | None) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_plan_experiment",
        description="nnUNetv2_plan_experiment with a planner that sizes patch and batch for DMAF-Net "
                    "(run nnUNetv2_extract_fingerprint first, nnUNetv2_preprocess -plans_name after).",
        epilog="Example: nnUNetv2_extract_fingerprint -d 990 && nnUNetv2_dmaf_plan_experiment -d 990 && "
               "nnUNetv2_preprocess -d 990 -plans_name nnUNetDMAFPlans -c 3d_fullres && "
               "nnUNetv2_train 990 3d_fullres 0 -tr nnUNetTrainerDMAF -p nnUNetDMAFPlans")
    parser.add_argument("-d", nargs="+", type=int, required=True, help="dataset IDs")
    parser.add_argument("-pl", default="nnUNetPlannerDMAF", choices=sorted(PLANNERS),
                        help="planner (default: %(default)s)")
    parser.add_argument("-gpu_memory_target", type=float, default=None,
                        help="GPU memory target in GB (default: the planner's, as nnU-Net's)")
    parser.add_argument("-preprocessor_name", default="DefaultPreprocessor")
    parser.add_argument("-overwrite_target_spacing", nargs="+", type=float, default=None,
                        help="as nnUNetv2_plan_experiment (3d_fullres and 3d_cascade_fullres only)")
    parser.add_argument("-overwrite_plans_name", default=None, help="plans name (default: the planner's)")
    args = parser.parse_args(argv)
    if args.gpu_memory_target is not None and args.gpu_memory_target <= 0:
        raise UsageError(f"-gpu_memory_target {args.gpu_memory_target}: must be positive")
    if nnUNet_preprocessed is None:
        raise UsageError("nnUNet_preprocessed is not set (see nnU-Net's documentation on environment variables)")
    for dataset_id in args.d:
        try:
            name = maybe_convert_to_dataset_name(dataset_id)
        except RuntimeError:
            raise DataError(f"-d {dataset_id}: no dataset with this ID in nnUNet_raw / nnUNet_preprocessed") from None
        fingerprint = Path(nnUNet_preprocessed) / name / "dataset_fingerprint.json"
        if not fingerprint.is_file():
            raise DataError(f"{fingerprint}: no such file (run nnUNetv2_extract_fingerprint -d {dataset_id} first)")
        _, identifier = plan_experiment_dataset(dataset_id, PLANNERS[args.pl], args.gpu_memory_target,
                                                args.preprocessor_name, args.overwrite_target_spacing,
                                                args.overwrite_plans_name)
        print(f"Dataset {dataset_id}: plans {identifier} written by {args.pl}; next: nnUNetv2_preprocess -d "
              f"{dataset_id} -plans_name {identifier}")


def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_plan_experiment``."""
    run_main(_main, argv)


if __name__ == "__main__":
    main()
