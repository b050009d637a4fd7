"""nnU-Net's predictor with an explicit modality mask, and the model options shared by the CLIs.

:class:`DMAFPredictor` is :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` (same
preprocessing, sliding window, test-time mirroring, fold ensembling and export) plus:

* :meth:`DMAFPredictor.modality_mask`: a context in which every network call of nnU-Net's sliding
  window uses the given mask (``DMAFNet.set_inference_modality_mask``), instead of inferring missing
  modalities from all-zero channels;
* :meth:`DMAFPredictor.preprocess` / :meth:`DMAFPredictor.predict_logits` /
  :meth:`DMAFPredictor.logits_to_segmentation`: one case in memory, preprocessed once and predicted
  with any mask (used by the subset evaluation).

Loading a model never ends in a traceback for a user's problem: a truncated checkpoint or one that
is not an nnU-Net checkpoint (or of a configuration the plans lack), a trainer class that is not
installed, weights that do not fit the plans, a corrupt plans.json or one of a network DMAF-Net
cannot be built from are :class:`~nnunetv2_dmaf.user_errors.DataError` s naming the file or folder.
Imports torch and nnU-Net: the CLIs import this module only once their arguments are checked.
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Collection, Iterator, Sequence

import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunetv2_dmaf.architecture.dmaf_net import UnsupportedPlansError
from nnunetv2_dmaf.inference.cases import dimensionality_problem
from nnunetv2_dmaf.inference.file_integrity import zip_archive_problem
from nnunetv2_dmaf.inference.model_options import parse_folds, read_json_object
from nnunetv2_dmaf.modalities import channel_names_from_dataset_json
from nnunetv2_dmaf.user_errors import DataError, UsageError, one_line

#: what nnU-Net's predictor reads from a checkpoint besides optional entries
NNUNET_CHECKPOINT_ENTRIES = ("trainer_name", "init_args", "network_weights")


class DMAFPredictor(nnUNetPredictor):
    """nnUNetPredictor for DMAF-Net models with per-case modality masks."""

    model_folder: Path = Path("model")

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds, checkpoint_name:
                                             str = "checkpoint_final.pth") -> None:
        """nnU-Net's model loading; DataError naming the file or folder if a checkpoint, plans.json or
        the weights are unusable."""
        folder = self.model_folder = Path(model_training_output_dir)
        plans = read_json_object(folder / "plans.json", ("configurations", "image_reader_writer"))
        folds = self.auto_detect_available_folds(str(folder), checkpoint_name) if use_folds is None else use_folds
        for fold in [folds] if isinstance(folds, str) else folds:
            checkpoint = folder / f"fold_{fold}" / checkpoint_name
            problem = nnunet_checkpoint_problem(checkpoint, plans["configurations"])
            if problem is not None:
                raise DataError(f"checkpoint {checkpoint}: {problem}")
        try:
            super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        except RuntimeError as error:
            if "Could not find requested nnunet trainer" in str(error):
                trainer = str(error).split("trainer ", 1)[1].split(" ", 1)[0]
                raise DataError(f"{folder}: the checkpoint's trainer class {trainer} is not installed (nnU-Net "
                                f"searches its own trainers and $nnUNet_extTrainer)") from None
            if "Error(s) in loading state_dict" in str(error):
                raise DataError(f"{folder}: the weights in {checkpoint_name} do not fit the network that plans.json "
                                f"describes ({one_line(error)})") from None
            raise
        except UnsupportedPlansError as error:
            raise DataError(f"{folder / 'plans.json'}: {error}") from None
        except KeyError as error:
            raise DataError(f"{folder}: an entry nnU-Net needs is missing from plans.json, dataset.json or the "
                            f"{checkpoint_name} checkpoints (KeyError: {error})") from None
        if self.dmaf_network is None:
            print(f"Note: trainer {self.trainer_name} has network {type(self.network).__name__}, not a DMAF-Net: "
                  f"missing channels are given to it as zeros, without a modality mask (as for a baseline).")
        if self.configuration_manager.previous_stage_name is not None:
            raise UsageError(f"{folder}: cascade configurations (with a previous stage) are not supported by the "
                             f"DMAF tools")

    @property
    def dmaf_network(self):
        """The DMAFNet (unwrapped from torch.compile), or None for other networks (e.g. nnU-Net's
        own U-Net from nnUNetTrainer), which then only see the missing channels as zeros."""
        network = getattr(self.network, "_orig_mod", self.network)
        return network if hasattr(network, "set_inference_modality_mask") else None

    @property
    def allowed_image_dims(self) -> set[int]:
        """Image dimensionalities this model predicts correctly: {2} for a model trained on 2D images,
        {3} for a 3D configuration, {2, 3} for a 2D configuration of 3D data (slice by slice)."""
        if int(self.plans_manager.plans["original_median_shape_after_transp"][0]) == 1:
            return {2}
        return {3} if len(self.configuration_manager.patch_size) == 3 else {2, 3}

    @property
    def model_description(self) -> str:
        trained_on = "2D" if self.allowed_image_dims == {2} else "3D"
        configuration = self.model_folder.name.split("__")[-1]  # TRAINER__PLANS__CONFIGURATION
        return (f"the model ({len(self.configuration_manager.patch_size)}D configuration {configuration}, "
                f"trained on {trained_on} images)")

    @property
    def channel_names(self) -> list[str]:
        return channel_names_from_dataset_json(self.dataset_json)

    @contextmanager
    def modality_mask(self, mask: Sequence[bool]) -> Iterator[None]:
        """Within the context, the network treats the channels where ``mask`` is False as missing."""
        self.set_modality_mask(mask)
        try:
            yield
        finally:
            self.set_modality_mask(None)

    def set_modality_mask(self, mask: Sequence[bool] | None) -> None:
        """Fixes (or with None resets) the mask used by all following network calls."""
        if self.dmaf_network is not None:
            self.dmaf_network.set_inference_modality_mask(None if mask is None else list(mask))

    def preprocess(self, data: np.ndarray, properties: dict) -> tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing of one case ([M, *S] raw intensities, reader properties); ValueError if
        the image's dimensionality does not suit the model (see :attr:`allowed_image_dims`)."""
        problem = dimensionality_problem(data.shape, self.allowed_image_dims, self.model_description)
        if problem is not None:
            raise ValueError(problem)
        preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose_preprocessing)
        preprocessed, _, properties = preprocessor.run_case_npy(data, None, deepcopy(properties), self.plans_manager,
                                                                self.configuration_manager, self.dataset_json)
        return torch.from_numpy(preprocessed).to(dtype=torch.float32, memory_format=torch.contiguous_format), \
            properties

    def predict_logits(self, data: torch.Tensor, mask: Sequence[bool]) -> torch.Tensor:
        """Logits (preprocessed geometry) of a preprocessed case with the channels absent in ``mask``
        set to zero and declared missing to the network."""
        data = zero_missing_channels(data, mask)
        with self.modality_mask(mask):
            return self.predict_logits_from_preprocessed_data(data)

    def logits_to_segmentation(self, logits: torch.Tensor, properties: dict) -> np.ndarray:
        """Segmentation in the original image geometry (as nnU-Net exports it, before writing)."""
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties)


def zero_missing_channels(data: torch.Tensor, mask: Sequence[bool]) -> torch.Tensor:
    """A copy of ``data`` [M, *S] with channels whose mask entry is False set to 0 (no copy if none)."""
    if len(mask) != data.shape[0]:
        raise ValueError(f"modality mask has {len(mask)} entries but the data has {data.shape[0]} channels")
    missing = [i for i, present in enumerate(mask) if not present]
    if not missing:
        return data
    data = data.clone()
    data[missing] = 0
    return data


# ---------------------------------------------------------------------------------------- CLI helpers
def torch_device(name: str) -> torch.device:
    """nnUNetv2_predict's device set-up (thread counts included)."""
    if name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
        return torch.device("cpu")
    if name == "cuda":
        torch.set_num_threads(1)
        return torch.device("cuda")
    return torch.device("mps")


def nnunet_checkpoint_problem(path: Path, configurations: Collection[str]) -> str | None:
    """Why the torch file ``path`` is not an nnU-Net checkpoint of one of the plans' ``configurations``
    (one line), or None. Memory-maps the file: reads its entries, not the weights."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # unpickling arbitrary bytes raises many types
        return f"torch.load cannot read it ({type(error).__name__}: {one_line(error)})"
    if not isinstance(checkpoint, dict):
        return f"holds a {type(checkpoint).__name__}, not an nnU-Net checkpoint (a dict of trainer state)"
    absent = [key for key in NNUNET_CHECKPOINT_ENTRIES if key not in checkpoint]
    if absent:
        return f"not an nnU-Net checkpoint (no entries {absent})"
    init_args = checkpoint["init_args"]
    configuration = init_args.get("configuration") if isinstance(init_args, dict) else None
    if not isinstance(configuration, str):
        return "not an nnU-Net checkpoint (its init_args name no configuration)"
    if configuration not in configurations:
        return (f"trained with configuration {configuration!r}, which the model's plans.json does not have "
                f"(it has {sorted(configurations)})")
    return None


def checked_folds(args: argparse.Namespace, folder: Path) -> list[int | str]:
    """The folds of the model ``folder`` (as :func:`~nnunetv2_dmaf.inference.model_options.model_folder_from_args`
    resolved it) that the CLI options of :func:`~nnunetv2_dmaf.inference.model_options.add_model_arguments`
    select, after the checks that need no model loading (checkpoint files present and complete, CUDA
    present): a command runs them before it writes anything. UsageError / DataError naming the option
    or file."""
    folds = parse_folds(args.f)
    if folds is None:
        try:
            folds = nnUNetPredictor.auto_detect_available_folds(str(folder), args.chk)
        except ValueError:  # a fold_* folder with a checkpoint whose name does not end in a number
            odd = sorted(p.parent.name for p in folder.glob(f"fold_*/{args.chk}")
                         if not p.parent.name[5:].isdigit() and p.parent.name != "fold_all")
            raise UsageError(f"{folder / odd[0] if odd else folder}: not a fold folder name (fold_<number> or "
                             f"fold_all); rename it or select folds with -f") from None
        if not folds:
            raise UsageError(f"no fold_X/{args.chk} found in {folder} (check -chk)")
    for fold in folds:
        checkpoint = folder / f"fold_{fold}" / args.chk
        if not checkpoint.is_file():
            raise UsageError(f"checkpoint {checkpoint} does not exist (check -f and -chk)")
        problem = zip_archive_problem(checkpoint)
        if problem is not None:
            raise DataError(f"checkpoint {checkpoint}: {problem} (truncated or corrupt file)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("-device cuda was requested but CUDA is not available; use -device cpu")
    return folds


def checkpoint_digests(folder: Path, folds: Sequence[int | str], checkpoint_name: str) -> dict[str, str]:
    """Fold -> SHA-256 of its checkpoint file (as :func:`checked_folds` found them). Recorded with a
    run's outputs, so that a resumed run refuses to mix in results of other weights (other folds, a
    fold trained again)."""
    digests = {}
    for fold in folds:
        digest = hashlib.sha256()  # not hashlib.file_digest: that needs Python 3.11, setup.py allows 3.10
        with open(folder / f"fold_{fold}" / checkpoint_name, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        digests[str(fold)] = digest.hexdigest()
    return digests


def load_predictor(args: argparse.Namespace, folder: Path, folds: list[int | str],
                   allow_tqdm: bool | None = None) -> DMAFPredictor:
    """The predictor of ``folder``'s ``folds`` as :func:`checked_folds` returned them,
    with the inference options of ``args``."""
    predictor = DMAFPredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
                              perform_everything_on_device=True, device=torch_device(args.device),
                              verbose=args.verbose, verbose_preprocessing=args.verbose,
                              allow_tqdm=(not args.disable_progress_bar) if allow_tqdm is None else allow_tqdm)
    predictor.initialize_from_trained_model_folder(str(folder), folds, args.chk)
    return predictor
