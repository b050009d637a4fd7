"""Command-line options naming a trained model (as nnUNetv2_predict's), without importing torch.

``-d/-c/-tr/-p`` locate ``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG`` as nnUNetv2_predict
does; ``-m`` names the model folder directly (as nnUNetv2_predict_from_modelfolder).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_TRAINER = "nnUNetTrainerDMAF"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """nnUNetv2_predict's model options (-d -c -tr -p -f -chk, or -m MODEL_FOLDER) and device/TTA options."""
    group = parser.add_argument_group("model (as nnUNetv2_predict; or -m for a model folder)")
    group.add_argument("-d", help="dataset name or id")
    group.add_argument("-c", help="configuration, e.g. 3d_fullres")
    group.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer (default: %(default)s)")
    group.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    group.add_argument("-m", metavar="MODEL_FOLDER",
                       help="trained model folder (TRAINER__PLANS__CONFIG, with fold_X subfolders) instead of "
                            "-d/-c/-tr/-p")
    group.add_argument("-f", nargs="+", default=None,
                       help="folds to ensemble (default: every fold_X with the checkpoint)")
    group.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default: %(default)s)")
    run = parser.add_argument_group("inference")
    run.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (default: %(default)s)")
    run.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    run.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="default: %(default)s")
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--disable_progress_bar", action="store_true")


def model_folder_from_args(args: argparse.Namespace) -> Path:
    """The model folder named by -m, or by -d/-c/-tr/-p under $nnUNet_results."""
    if args.m:
        folder = Path(args.m)
    else:
        if not args.d or not args.c:
            raise ValueError("give the model with -d DATASET -c CONFIGURATION [-tr TRAINER -p PLANS], "
                             "or -m MODEL_FOLDER")
        if not os.environ.get("nnUNet_results"):
            raise ValueError("nnUNet_results is not set: set it, or pass the model folder with -m")
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        folder = Path(get_output_folder(args.d, args.tr, args.p, args.c))
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        raise FileNotFoundError(f"{folder} is not a trained nnU-Net model folder (plans.json/dataset.json missing)")
    return folder




def model_dataset_json(folder: Path) -> dict:
    """The dataset.json stored with the trained model (channel names, labels, file ending)."""
    return json.loads((folder / "dataset.json").read_text())
