"""Command-line options naming a trained model (as nnUNetv2_predict's), without importing torch.

``-d/-c/-tr/-p`` locate ``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG`` as nnUNetv2_predict
does; ``-m`` names the model folder directly (as nnUNetv2_predict_from_modelfolder). Bad values raise
:class:`~nnunetv2_dmaf.user_errors.UsageError` (naming the option), unreadable model files
:class:`~nnunetv2_dmaf.user_errors.DataError` (naming the file).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nnunetv2_dmaf.modalities import channel_names_from_dataset_json
from nnunetv2_dmaf.user_errors import DataError, UsageError, one_line

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


def check_model_arguments(args: argparse.Namespace) -> None:
    """Option values that nnU-Net would only reject deep inside (with an assertion): UsageError."""
    if not 0 < args.step_size <= 1:
        raise UsageError(f"-step_size {args.step_size:g}: must be in (0, 1] (fraction of the patch size)")
    parse_folds(args.f)


def parse_folds(values: list[str] | None) -> list[int | str] | None:
    """-f values as nnU-Net uses them (ints or 'all'); None = every trained fold."""
    if values is None:
        return None
    folds: list[int | str] = []
    for value in values:
        if value == "all":
            folds.append(value)
        elif value.isdigit():
            folds.append(int(value))
        else:
            raise UsageError(f"-f {value}: folds are non-negative integers or 'all'")
    return folds


def dataset_name(dataset: str, option: str = "-d") -> str:
    """nnU-Net's DatasetXXX_Name for a dataset id or name; UsageError naming ``option`` if none is found."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError):  # nnU-Net's "could not find" / "not a name or id"
        if not dataset.startswith("Dataset") and not dataset.isdigit():
            raise UsageError(f"{option} {dataset}: not a dataset id (e.g. 990) or name (e.g. Dataset990_DMAFDemo)"
                             ) from None
        raise UsageError(f"{option} {dataset}: no such dataset (or several with this id) in $nnUNet_raw, "
                         f"$nnUNet_preprocessed or $nnUNet_results") from None


def model_folder_from_args(args: argparse.Namespace) -> Path:
    """The model folder named by -m, or by -d/-c/-tr/-p under $nnUNet_results (UsageError if none)."""
    if args.m:
        folder = Path(args.m)
    else:
        if not args.d or not args.c:
            raise UsageError("give the model with -d DATASET -c CONFIGURATION [-tr TRAINER -p PLANS], "
                             "or -m MODEL_FOLDER")
        if not os.environ.get("nnUNet_results"):
            raise UsageError("nnUNet_results is not set: set it, or pass the model folder with -m")
        folder = Path(os.environ["nnUNet_results"]) / dataset_name(str(args.d)) / f"{args.tr}__{args.p}__{args.c}"
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        raise UsageError(f"{folder} is not a trained nnU-Net model folder (plans.json/dataset.json missing; "
                         f"check -d/-c/-tr/-p or -m)")
    return folder


def read_json_object(path: Path, required_keys: tuple[str, ...] = ()) -> dict:
    """A JSON object from ``path``; DataError naming the file if unreadable, not an object, or lacking keys."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a readable JSON file ({one_line(error)})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(content).__name__}")
    absent = [k for k in required_keys if k not in content]
    if absent:
        raise DataError(f"{path}: missing entries {absent}")
    return content


def model_dataset_json(folder: Path) -> dict:
    """The dataset.json stored with the trained model (channel names, labels, file ending)."""
    return read_json_object(folder / "dataset.json", ("channel_names", "labels", "file_ending"))


def model_channel_names(folder: Path, dataset_json: dict) -> list[str]:
    """Channel names in network order of the model ``folder`` whose :func:`model_dataset_json` is
    ``dataset_json``; DataError naming its dataset.json unless ``channel_names`` maps the channel
    indices "0".."M-1" to names (as nnU-Net writes it)."""
    names = dataset_json["channel_names"]
    where = f"{folder / 'dataset.json'}: channel_names"
    if not isinstance(names, dict) or not names:
        raise DataError(f'{where}: expected a non-empty object {{"0": NAME, ...}}, got {json.dumps(names)[:80]}')
    indices = [str(i) for i in range(len(names))]
    if set(names) != set(indices):
        raise DataError(f"{where}: keys must be the channel indices {indices}, got {list(names)}")
    return channel_names_from_dataset_json(dataset_json)
