"""``nnUNetv2_dmaf_evaluate_subsets``: evaluate a DMAF-Net model on every modality subset.

Usage::

    nnUNetv2_dmaf_evaluate_subsets -i imagesTs -l labelsTs -o eval_out -d 990 -c 3d_fullres -f 0
        [-tr nnUNetTrainerDMAF] [--hd95_empty_penalty 373.13|diagonal] [--cases ID ...]
        [--disable_tta] [-device cpu] [--save_predictions] [--exact_preprocessing] [--overwrite]

For each labelled test case (all channels present) and each of the 2^M - 1 non-empty modality
subsets, the case is predicted with the other channels missing (zeroed and masked, as
``nnUNetv2_dmaf_predict`` does) and scored per region (dataset.json regions or labels): Dice (both
empty = 1) and HD95 in mm (both empty = 0, one empty = penalty). Each case is read and
preprocessed once, with all its channels; subsets only change the zeroed channels and the network's
mask. This equals predicting the subset from files exactly when the channels share their nonzero
region (skull-stripped, co-registered data such as BraTS), because nnU-Net crops to, and may
normalise within, the union of the channels' nonzero voxels; ``--exact_preprocessing`` preprocesses
every subset from the zero-filled raw case instead (slower, identical to nnUNetv2_dmaf_predict).

Outputs in ``-o``: per_case.csv, summary.csv, summary.json (with the conventions and run metadata),
summary.md (Markdown table), dice_heatmap.png; with ``--save_predictions`` also
``predictions/<subset>/CASE<ending>``. Exit status 1 if a case could not be evaluated (it is listed
and left out of the tables), 2 for usage errors.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunetv2_dmaf.evaluation.metrics import BRATS_HD95_PENALTY_MM, dice, hd95, image_diagonal_mm
from nnunetv2_dmaf.evaluation.regions import Region, ignore_label_from_dataset_json, regions_from_dataset_json
from nnunetv2_dmaf.evaluation.report import OUTPUT_FILES, metric_columns, summarize, write_report
from nnunetv2_dmaf.inference.cases import CaseFiles, CaseInputError, discover_cases, load_case
from nnunetv2_dmaf.modalities import (ModalityMask, all_modality_subsets, channel_names_from_dataset_json,
                                                subset_name)
from nnunetv2_dmaf.inference.model_options import add_model_arguments, model_dataset_json, model_folder_from_args

if TYPE_CHECKING:  # torch and nnU-Net are imported only when the model is loaded
    from nnunetv2_dmaf.inference.predictor import DMAFPredictor

DICE_RULE = "Dice = 2|P∩R|/(|P|+|R|); both empty = 1 (BraTS); exactly one empty = 0"
HD95_RULE = ("HD95 in mm = 95th percentile (linear interpolation) of the pooled symmetric surface distances "
             "(6-connected surface voxels, spacing-aware Euclidean distance transform); both empty = 0")


@dataclass
class EvaluationCase:
    case: CaseFiles
    label_file: Path


def parse_penalty(value: str) -> float | str:
    """'diagonal' or a number of mm (argparse type)."""
    if value.lower() == "diagonal":
        return "diagonal"
    try:
        penalty = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of mm or 'diagonal', got {value!r}") from None
    if penalty < 0:
        raise argparse.ArgumentTypeError("the HD95 penalty must be >= 0")
    return penalty


def penalty_description(penalty: float | str) -> str:
    if penalty == "diagonal":
        return "HD95 when exactly one of prediction/reference is empty = the image diagonal in mm (per case)"
    return f"HD95 when exactly one of prediction/reference is empty = {penalty:g} mm" + \
        (" (BraTS convention: diagonal of the 240x240x155 1 mm volume)" if penalty == BRATS_HD95_PENALTY_MM else "")


def empty_penalty_mm(penalty: float | str, shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The HD95 value for a region empty in exactly one mask, for an image of this shape/spacing."""
    return image_diagonal_mm(shape, spacing) if penalty == "diagonal" else float(penalty)


def score_case(segmentation: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
               regions: Sequence[Region], penalty: float | str, ignore_label: int | None = None) -> dict[str, float]:
    """Dice and HD95 per region of one predicted case (original geometry)."""
    if segmentation.shape != reference.shape:
        raise ValueError(f"prediction shape {segmentation.shape} differs from reference shape {reference.shape}")
    valid = None if ignore_label is None else reference != ignore_label
    empty_penalty = empty_penalty_mm(penalty, reference.shape, spacing)
    scores: dict[str, float] = {}
    for region in regions:
        predicted, expected = region.mask(segmentation), region.mask(reference)
        if valid is not None:
            predicted, expected = predicted & valid, expected & valid
        scores[f"Dice {region.name}"] = dice(predicted, expected)
        scores[f"HD95 {region.name}"] = hd95(predicted, expected, spacing, empty_penalty)
    return scores


def find_evaluation_cases(image_folder: Path, label_folder: Path, file_ending: str,
                          selected: Sequence[str] | None) -> tuple[list[EvaluationCase], list[CaseInputError]]:
    """Pairs image cases with ``label_folder/CASE<ending>``; errors for unpaired or unknown cases."""
    cases, errors = discover_cases(image_folder, file_ending)
    by_id = {c.case_id: c for c in cases}
    if selected:
        unknown = [s for s in selected if s not in by_id]
        errors += [CaseInputError(s, image_folder / f"{s}_0000{file_ending}", "no such case in the image folder")
                   for s in unknown]
        cases = [by_id[s] for s in selected if s in by_id]
    paired = []
    for case in cases:
        label_file = label_folder / f"{case.case_id}{file_ending}"
        if not label_file.is_file():
            errors.append(CaseInputError(case.case_id, label_file, "reference label file does not exist"))
            continue
        paired.append(EvaluationCase(case, label_file))
    return paired, errors


def evaluate_subsets(predictor: DMAFPredictor, cases: Sequence[EvaluationCase], subsets: Sequence[ModalityMask],
                     penalty: float | str = BRATS_HD95_PENALTY_MM, exact_preprocessing: bool = False,
                     predictions_folder: Path | None = None, progress: bool = True
                     ) -> tuple[pd.DataFrame, list[CaseInputError]]:
    """Predicts and scores every case with every subset; returns the per-case table and the failures."""
    names = predictor.channel_names
    regions = regions_from_dataset_json(predictor.dataset_json)
    ignore_label = ignore_label_from_dataset_json(predictor.dataset_json)
    file_ending = predictor.dataset_json["file_ending"]
    reader_writer = predictor.plans_manager.image_reader_writer_class()
    rows, failures = [], []
    bar = tqdm(total=len(cases) * len(subsets), desc="subset predictions", unit="pred", disable=not progress)
    for item in cases:
        case_id = item.case.case_id
        done = 0
        try:
            loaded = load_case(item.case, names, reader_writer)
            if not all(loaded.mask):
                absent = [n for n, p in zip(names, loaded.mask) if not p]
                raise CaseInputError(case_id, None,
                                     f"subset evaluation needs every channel; missing: {', '.join(absent)}")
            try:
                reference, reference_properties = reader_writer.read_seg(str(item.label_file))
            except Exception as error:
                raise CaseInputError(case_id, item.label_file,
                                     f"could not be read as a label image ({error})") from error
            if reference.shape[1:] != loaded.data.shape[1:]:
                raise CaseInputError(case_id, item.label_file, f"label shape {reference.shape[1:]} differs from the "
                                                               f"image shape {loaded.data.shape[1:]}")
            spacing = reference_properties["spacing"]
            if not exact_preprocessing:
                data, properties = predictor.preprocess(loaded.data, loaded.properties)
            case_rows = []
            for mask in subsets:
                name = subset_name(mask, names)
                bar.set_postfix_str(f"{case_id} {name}")
                if exact_preprocessing:
                    raw = loaded.data.copy()
                    raw[[i for i, p in enumerate(mask) if not p]] = 0
                    data, properties = predictor.preprocess(raw, loaded.properties)
                segmentation = predictor.logits_to_segmentation(predictor.predict_logits(data, mask), properties)
                if predictions_folder is not None:
                    folder = predictions_folder / name
                    folder.mkdir(parents=True, exist_ok=True)
                    reader_writer.write_seg(segmentation, str(folder / f"{case_id}{file_ending}"), properties)
                scores = score_case(segmentation, reference[0], spacing, regions, penalty, ignore_label)
                case_rows.append({"subset": name, "num_modalities": int(sum(mask)), "case": case_id, **scores,
                                  "hd95_empty_penalty_mm": empty_penalty_mm(penalty, reference.shape[1:], spacing)})
                bar.update()
                done += 1
            rows += case_rows
        except (CaseInputError, ValueError) as error:
            if not isinstance(error, CaseInputError):
                error = CaseInputError(case_id, item.label_file, str(error))
            failures.append(error)
            tqdm.write(f"ERROR {error}", file=sys.stderr)
            bar.update(len(subsets) - done)
    bar.close()
    dice_cols, hd_cols = metric_columns([r.name for r in regions])
    columns = ["subset", "num_modalities", "case"] + dice_cols + hd_cols + ["hd95_empty_penalty_mm"]
    return pd.DataFrame(rows, columns=columns), failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_dmaf_evaluate_subsets",
        description="Predict labelled test cases with every non-empty modality subset and tabulate Dice and "
                    "HD95 per region, per subset and averaged over subsets (CSV, JSON, Markdown, PNG heat map).")
    parser.add_argument("-i", required=True, help="test images (CASE_XXXX<ending>, every channel present)")
    parser.add_argument("-l", required=True, help="reference labels (CASE<ending>)")
    parser.add_argument("-o", required=True, help="output folder for the tables and the plot")
    add_model_arguments(parser)
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="evaluate only these case ids")
    parser.add_argument("--hd95_empty_penalty", type=parse_penalty, default=BRATS_HD95_PENALTY_MM,
                        metavar="MM|diagonal", help="HD95 when exactly one of prediction/reference is empty: mm, or "
                                                    "'diagonal' (image diagonal in mm). Default: %(default)s (BraTS)")
    parser.add_argument("--exact_preprocessing", action="store_true",
                        help="preprocess each subset from the zero-filled raw case (slower; see --help text above)")
    parser.add_argument("--save_predictions", action="store_true",
                        help="also write the segmentations to OUTPUT/predictions/<subset>/")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    image_folder, label_folder, output_folder = Path(args.i), Path(args.l), Path(args.o)
    for folder, flag in ((image_folder, "-i"), (label_folder, "-l")):
        if not folder.is_dir():
            parser.exit(2, f"error: {flag} folder {folder} does not exist\n")
    existing = [output_folder / n for n in OUTPUT_FILES if (output_folder / n).exists()]
    if args.save_predictions and (output_folder / "predictions").exists():
        existing.append(output_folder / "predictions")
    if existing and not args.overwrite:
        parser.exit(2, f"error: {existing[0]} already exists; pass --overwrite to replace the evaluation outputs\n")
    try:
        model_folder = model_folder_from_args(args)
        dataset_json = model_dataset_json(model_folder)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    names = channel_names_from_dataset_json(dataset_json)
    regions = regions_from_dataset_json(dataset_json)
    cases, failures = find_evaluation_cases(image_folder, label_folder, dataset_json["file_ending"], args.cases)
    for error in failures:
        print(f"ERROR {error}", file=sys.stderr)
    if not cases:
        parser.exit(1, "error: no case to evaluate\n")
    try:
        from nnunetv2_dmaf.inference.predictor import predictor_from_args
        predictor = predictor_from_args(args, allow_tqdm=False)
    except (ValueError, FileNotFoundError, TypeError) as error:
        parser.exit(2, f"error: {error}\n")
    subsets = all_modality_subsets(len(names))
    print(f"Evaluating {len(cases)} case(s) x {len(subsets)} modality subsets of {', '.join(names)}; regions: "
          f"{', '.join(f'{r.name} {r.labels}' for r in regions)}")
    start = time.time()
    per_case, case_failures = evaluate_subsets(
        predictor, cases, subsets, args.hd95_empty_penalty, args.exact_preprocessing,
        output_folder / "predictions" if args.save_predictions else None, not args.disable_progress_bar)
    failures += case_failures
    if per_case.empty:
        parser.exit(1, "error: no case could be evaluated\n")
    subset_names = [subset_name(m, names) for m in subsets]
    summary = summarize(per_case, subset_names, [r.name for r in regions])
    metadata = {
        "model_folder": str(model_folder.resolve()),
        "trainer": predictor.trainer_name, "folds": [str(f) for f in (args.f or ["auto"])], "checkpoint": args.chk,
        "tta_mirroring": not args.disable_tta, "step_size": args.step_size,
        "channels": names, "regions": {r.name: list(r.labels) for r in regions},
        "subsets": subset_names, "cases": sorted(per_case["case"].unique().tolist()),
        "failed_cases": [{"case": e.case_id, "file": e.file, "reason": e.reason} for e in failures],
        "preprocessing": "per subset from the zero-filled raw case" if args.exact_preprocessing
        else "once per case with all channels; missing channels zeroed after preprocessing",
        "hd95_empty_penalty_mm": args.hd95_empty_penalty,
        "conventions": {"Dice": DICE_RULE, "HD95": HD95_RULE,
                        "HD95 penalty": penalty_description(args.hd95_empty_penalty),
                        "mean over subsets": "unweighted mean of the 2^M-1 subset means",
                        "missing modality": "channel zeroed and declared missing to the network (encoder skipped)"},
        "seconds": round(time.time() - start, 1),
    }
    paths = write_report(output_folder, per_case, summary, [r.name for r in regions], metadata)
    print((output_folder / "summary.md").read_text())
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    if failures:
        print(f"{len(failures)} case(s) could not be evaluated:", file=sys.stderr)
        for error in failures:
            print(f"  FAILED {error}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
