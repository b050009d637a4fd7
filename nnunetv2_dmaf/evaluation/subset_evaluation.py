"""``nnUNetv2_dmaf_evaluate_subsets``: evaluate a DMAF-Net model on every modality subset.

Usage::

    nnUNetv2_dmaf_evaluate_subsets -i imagesTs -l labelsTs -o eval_out -d 990 -c 3d_fullres -f 0
        [-tr nnUNetTrainerDMAF] [--hd95_empty_penalty diagonal|MM] [--et_postprocess_voxels 500]
        [--regions dataset|myops] [--cases ID ...] [--continue | --overwrite]
        [--disable_tta] [-device cpu] [--save_predictions] [--exact_preprocessing]

For each labelled test case (all channels present) and each of the 2^M - 1 non-empty modality
subsets, the case is predicted with the other channels missing (zeroed and masked, as
``nnUNetv2_dmaf_predict`` does) and scored per region (dataset.json regions or labels, or the MyoPS
regions): Dice (both empty = 1) and HD95 in mm (both empty = 0, one empty = the case's image
diagonal in mm by default). Each case is read and preprocessed once, with all its channels; subsets
only change the zeroed channels and the network's mask. This equals predicting the subset from files
exactly when the channels share their nonzero region (skull-stripped, co-registered data such as
BraTS), because nnU-Net crops to, and may normalise within, the union of the channels' nonzero
voxels; ``--exact_preprocessing`` preprocesses every subset from the zero-filled raw case instead
(slower, identical to nnUNetv2_dmaf_predict).

Reference labels are checked before predicting: a truncated/unreadable file, a shape that differs
from the image, or a value dataset.json does not define (a 5, a 1.5) fails that case (reported with
its file), the other cases still run, and the exit status is 1.

Outputs in ``-o``: ``evaluation_settings.json`` (written first), ``per_case.csv`` (rewritten after
every prediction, so an interrupted run keeps its rows and ``--continue`` resumes it), and at the end
summary.csv, summary.json (with the conventions and run metadata), summary.md (Markdown table),
dice_heatmap.png and ``paper_table_Dice_<order>.md/.csv`` (rows in the published papers' subset order
when the channels are BraTS or MyoPS ones, see ``nnUNetv2_dmaf_paper_table``); with
``--save_predictions`` also ``predictions/<subset>/CASE<ending>``. Every file is written atomically.
Exit status 1 if a case could not be evaluated (it is listed and left out of the tables), 2 for usage
errors, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunetv2_dmaf.atomic_files import atomic_output, write_text_atomic
from nnunetv2_dmaf.channel_files import channel_file_name
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.dataset_conversion.conversion_errors import ConversionError
from nnunetv2_dmaf.dataset_conversion.image_files import check_nifti_complete
from nnunetv2_dmaf.evaluation.metrics import BRATS_HD95_PENALTY_MM, dice, hd95, image_diagonal_mm
from nnunetv2_dmaf.evaluation.paper_conventions import ET_POSTPROCESS_VOXELS, ET_REGION_NAMES, paper_subset_order
from nnunetv2_dmaf.evaluation.paper_table import PAPER_TABLE_PREFIX, SETTINGS_FILE, write_paper_table
from nnunetv2_dmaf.evaluation.regions import (Region, dataset_label_values, find_region,
                                              ignore_label_from_dataset_json, myops_regions, postprocessed_region,
                                              regions_from_dataset_json)
from nnunetv2_dmaf.evaluation.report import (OUTPUT_FILES, metric_columns, read_per_case, summarize, write_per_case,
                                             write_report)
from nnunetv2_dmaf.inference.cases import CaseFiles, CaseInputError, discover_cases, load_case
from nnunetv2_dmaf.inference.model_options import (add_model_arguments, check_model_arguments, model_channel_names,
                                                   model_dataset_json, model_folder_from_args)
from nnunetv2_dmaf.modalities import ModalityMask, all_modality_subsets, subset_name
from nnunetv2_dmaf.user_errors import DataError, UsageError, run_main

if TYPE_CHECKING:  # torch and nnU-Net are imported only when the model is loaded
    from nnunetv2_dmaf.inference.predictor import DMAFPredictor

DICE_RULE = "Dice = 2|P∩R|/(|P|+|R|); both empty = 1 (BraTS); exactly one empty = 0"
HD95_RULE = ("HD95 in mm = 95th percentile (linear interpolation) of the pooled symmetric surface distances "
             "(6-connected surface voxels, spacing-aware Euclidean distance transform); both empty = 0")
PER_CASE_KEY = ("case", "subset")


@dataclass
class EvaluationCase:
    case: CaseFiles
    label_file: Path


def evaluation_regions(dataset_json: dict, preset: str = "dataset", et_postprocess_voxels: int | None = None,
                       et_region: str | None = None) -> list[Region]:
    """The scored regions: dataset.json's (or the MyoPS ones), plus the post-processed ET right after
    ET when ``et_postprocess_voxels``; UsageError if no ET region is found."""
    regions = myops_regions() if preset == "myops" else regions_from_dataset_json(dataset_json)
    if not et_postprocess_voxels:
        return regions
    et = find_region(regions, [et_region] if et_region else ET_REGION_NAMES)
    if et is None:
        raise UsageError(f"--et_postprocess_voxels: no region named {et_region or ' / '.join(ET_REGION_NAMES)!r} "
                         f"among {[r.name for r in regions]}; name it with --et_region")
    regions.insert(regions.index(et) + 1, postprocessed_region(et, et_postprocess_voxels))
    return regions


def read_reference(item: EvaluationCase, reader_writer, dataset_json: dict) -> tuple[np.ndarray, dict]:
    """The reference segmentation [1, *S] and properties, after checking the file is complete and
    every value is a label of dataset.json (CaseInputError naming the file otherwise)."""
    case_id, path = item.case.case_id, item.label_file
    try:
        check_nifti_complete(path)
        reference, properties = reader_writer.read_seg(str(path))
    except ConversionError as error:
        raise CaseInputError(case_id, path, str(error).split(": ", 1)[-1]) from None
    except Exception as error:  # the reader raises various types for garbage
        raise CaseInputError(case_id, path, f"could not be read as a label image ({error})") from None
    defined = dataset_label_values(dataset_json)
    values = np.unique(reference)
    bad = [v for v in values.tolist() if not (float(v).is_integer() and int(v) in defined)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10])
        raise CaseInputError(case_id, path, f"label value(s) {shown} not defined in dataset.json "
                                            f"(defined: {sorted(defined)})")
    return reference, properties


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
        predicted, expected = region.predicted_mask(segmentation), region.mask(reference)
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
        errors += [CaseInputError(s, image_folder / channel_file_name(s, 0, file_ending), "no such case in the image folder")
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
                     penalty: float | str = "diagonal", exact_preprocessing: bool = False,
                     predictions_folder: Path | None = None, progress: bool = True,
                     regions: Sequence[Region] | None = None, done: Collection[tuple[str, str]] = (),
                     on_row: Callable[[dict], None] | None = None) -> tuple[pd.DataFrame, list[CaseInputError]]:
    """Predicts and scores every case with every subset (except the (case, subset) pairs in ``done``);
    calls ``on_row`` after each prediction; returns the new per-case rows and the failures."""
    names = predictor.channel_names
    regions = list(regions) if regions is not None else regions_from_dataset_json(predictor.dataset_json)
    ignore_label = ignore_label_from_dataset_json(predictor.dataset_json)
    file_ending = predictor.dataset_json["file_ending"]
    reader_writer = predictor.plans_manager.image_reader_writer_class()
    done = set(done)
    todo = [(item, [m for m in subsets if (item.case.case_id, subset_name(m, names)) not in done]) for item in cases]
    todo = [(item, masks) for item, masks in todo if masks]
    rows, failures = [], []
    bar = tqdm(total=sum(len(m) for _, m in todo), desc="subset predictions", unit="pred", disable=not progress,
               mininterval=0)
    for item, masks in todo:
        case_id = item.case.case_id
        finished = 0
        try:
            loaded = load_case(item.case, names, reader_writer, allowed_dims=predictor.allowed_image_dims,
                               model_description=predictor.model_description)
            if not all(loaded.mask):
                absent = [n for n, p in zip(names, loaded.mask) if not p]
                raise CaseInputError(case_id, None,
                                     f"subset evaluation needs every channel; missing: {', '.join(absent)}")
            reference, reference_properties = read_reference(item, reader_writer, predictor.dataset_json)
            if reference.shape[1:] != loaded.data.shape[1:]:
                raise CaseInputError(case_id, item.label_file, f"label shape {reference.shape[1:]} differs from the "
                                                               f"image shape {loaded.data.shape[1:]}")
            spacing = reference_properties["spacing"]
            if not exact_preprocessing:
                data, properties = predictor.preprocess(loaded.data, loaded.properties)
            for mask in masks:
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
                    with atomic_output(folder / f"{case_id}{file_ending}") as tmp:
                        reader_writer.write_seg(segmentation, str(tmp), properties)
                scores = score_case(segmentation, reference[0], spacing, regions, penalty, ignore_label)
                row = {"subset": name, "num_modalities": int(sum(mask)), "case": case_id, **scores,
                       "hd95_empty_penalty_mm": empty_penalty_mm(penalty, reference.shape[1:], spacing)}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                bar.update()
                finished += 1
        except (CaseInputError, ValueError) as error:
            if not isinstance(error, CaseInputError):
                error = CaseInputError(case_id, item.label_file, str(error))
            failures.append(error)
            tqdm.write(f"ERROR {error}", file=sys.stderr)
            bar.update(len(masks) - finished)
    bar.close()
    return pd.DataFrame(rows, columns=per_case_columns(regions)), failures


def per_case_columns(regions: Sequence[Region]) -> list[str]:
    dice_cols, hd_cols = metric_columns([r.name for r in regions])
    return ["subset", "num_modalities", "case"] + dice_cols + hd_cols + ["hd95_empty_penalty_mm"]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_evaluate_subsets",
        description="Predict labelled test cases with every non-empty modality subset and tabulate Dice and "
                    "HD95 per region, per subset and averaged over subsets (CSV, JSON, Markdown, PNG heat map, "
                    "and the papers' table). Per-case results are written as they come; --continue resumes.")
    parser.add_argument("-i", required=True, help="test images (CASE_XXXX<ending>, every channel present)")
    parser.add_argument("-l", required=True, help="reference labels (CASE<ending>)")
    parser.add_argument("-o", required=True, help="output folder for the tables and the plot")
    add_model_arguments(parser)
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="evaluate only these case ids")
    parser.add_argument("--hd95_empty_penalty", type=parse_penalty, default="diagonal",
                        metavar="diagonal|MM", help="HD95 when exactly one of prediction/reference is empty: each "
                                                    "case's image diagonal in mm (default; 373.13 for BraTS "
                                                    "geometry), or a fixed number of mm")
    parser.add_argument("--et_postprocess_voxels", type=int, default=None, metavar="N",
                        help=f"also score ET with predictions under N voxels counted as empty (the papers' "
                             f"convention: {ET_POSTPROCESS_VOXELS}), next to raw ET. Default: off")
    parser.add_argument("--et_region", default=None, metavar="NAME",
                        help="region post-processed by --et_postprocess_voxels (default: the region named "
                             "'enhancing tumor'/'enhancing tumour'/'ET')")
    parser.add_argument("--regions", choices=("dataset", "myops"), default="dataset",
                        help="scored regions: dataset.json's (default), or the MyoPS ones (LV blood pool, RV blood "
                             "pool, myocardium = labels 1+4+5, edema+scar, scar) for a dataset converted with "
                             "--no-regions")
    parser.add_argument("--exact_preprocessing", action="store_true",
                        help="preprocess each subset from the zero-filled raw case (slower; see --help text above)")
    parser.add_argument("--save_predictions", action="store_true",
                        help="also write the segmentations to OUTPUT/predictions/<subset>/")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--continue", dest="continue_run", action="store_true",
                        help="resume an interrupted run in -o: keep its per_case.csv rows, predict the rest "
                             "(the settings must be the same)")
    resume.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def run_settings(args: argparse.Namespace, model_folder: Path, checkpoint_sha256: dict[str, str],
                 names: Sequence[str], regions: Sequence[Region]) -> dict:
    """What the rows of per_case.csv depend on; ``--continue`` requires the same. ``checkpoint_sha256``:
    fold -> digest of its checkpoint, for the folds used (also when -f was left out)."""
    return {"model_folder": str(model_folder.resolve()), "folds": list(checkpoint_sha256),
            "checkpoint": args.chk, "checkpoint_sha256": dict(checkpoint_sha256),
            "tta_mirroring": not args.disable_tta, "step_size": args.step_size,
            "channels": list(names), "regions": {r.name: list(r.labels) for r in regions},
            "hd95_empty_penalty": args.hd95_empty_penalty, "et_postprocess_voxels": args.et_postprocess_voxels,
            "exact_preprocessing": args.exact_preprocessing}


def resumed_rows(output_folder: Path, settings: dict, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of an earlier run to continue (empty if there are none); UsageError if its settings differ."""
    settings_path, per_case_path = output_folder / SETTINGS_FILE, output_folder / "per_case.csv"
    if not settings_path.is_file():
        return pd.DataFrame(columns=list(columns))
    try:
        earlier = json.loads(settings_path.read_text())
    except ValueError as error:
        raise DataError(f"{settings_path}: unreadable ({error}); remove it or use --overwrite") from None
    differing = sorted(k for k in set(settings) | set(earlier) if earlier.get(k) != settings.get(k))
    if differing:
        raise UsageError(f"--continue: {settings_path} was written with other settings ({', '.join(differing)}); "
                         f"use the same options, another -o, or --overwrite")
    if not per_case_path.is_file():
        return pd.DataFrame(columns=list(columns))
    try:
        rows = read_per_case(per_case_path)
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{per_case_path}: unreadable ({error}); use --overwrite to start again") from None
    if list(rows.columns) != list(columns):
        raise DataError(f"{per_case_path}: columns {list(rows.columns)} differ from this run's; use --overwrite")
    return rows.drop_duplicates(subset=list(PER_CASE_KEY), keep="last")


def main(argv: list[str] | None = None) -> None:
    """``nnUNetv2_dmaf_evaluate_subsets``."""
    run_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    return evaluate_command(build_parser().parse_args(argv))


def evaluate_command(args: argparse.Namespace,
                     adapt_predictor: Callable[[DMAFPredictor], DMAFPredictor] | None = None,
                     extra_settings: dict | None = None) -> int:
    """The command behind ``nnUNetv2_dmaf_evaluate_subsets`` for parsed ``args`` (of :func:`build_parser`).
    For diagnostics that evaluate a changed model the same way: ``adapt_predictor`` is applied to the
    loaded predictor, and ``extra_settings`` (describing that change) join the run settings, so that
    ``--continue`` never mixes the rows of two different models (their keys must be new ones).
    Returns the exit status."""
    image_folder, label_folder, output_folder = Path(args.i), Path(args.l), Path(args.o)
    for folder, flag in ((image_folder, "-i"), (label_folder, "-l")):
        if not folder.is_dir():
            raise UsageError(f"{flag} folder {folder} does not exist")
    if output_folder.exists() and not output_folder.is_dir():
        raise UsageError(f"-o {output_folder} exists and is not a folder")
    if not output_folder.parent.is_dir():
        raise UsageError(f"-o {output_folder}: its folder {output_folder.parent} does not exist")
    if args.et_postprocess_voxels is not None and args.et_postprocess_voxels < 1:
        raise UsageError(f"--et_postprocess_voxels must be >= 1, got {args.et_postprocess_voxels}")
    existing = [output_folder / n for n in (*OUTPUT_FILES, SETTINGS_FILE) if (output_folder / n).exists()]
    existing += sorted(output_folder.glob(f"{PAPER_TABLE_PREFIX}*"))
    if args.save_predictions and (output_folder / "predictions").exists():
        existing.append(output_folder / "predictions")
    if existing and not (args.overwrite or args.continue_run):
        raise UsageError(f"{existing[0]} already exists; pass --continue to resume that run or --overwrite to "
                         f"replace the evaluation outputs")
    check_model_arguments(args)
    model_folder = model_folder_from_args(args)
    dataset_json = model_dataset_json(model_folder)
    names = model_channel_names(model_folder, dataset_json)
    regions = evaluation_regions(dataset_json, args.regions, args.et_postprocess_voxels, args.et_region)
    region_names = [r.name for r in regions]
    from nnunetv2_dmaf.inference.predictor import checked_folds, checkpoint_digests, load_predictor
    folds = checked_folds(args, model_folder)
    settings = {**run_settings(args, model_folder, checkpoint_digests(model_folder, folds, args.chk), names, regions),
                **(extra_settings or {})}
    columns = per_case_columns(regions)
    earlier = resumed_rows(output_folder, settings, columns) if args.continue_run else pd.DataFrame(columns=columns)
    cases, failures = find_evaluation_cases(image_folder, label_folder, dataset_json["file_ending"], args.cases)
    for error in failures:
        print(f"ERROR {error}", file=sys.stderr)
    if not cases:
        raise DataError("no case to evaluate")
    predictor = load_predictor(args, model_folder, folds, allow_tqdm=False)
    if adapt_predictor is not None:
        predictor = adapt_predictor(predictor)
    subsets = all_modality_subsets(len(names))
    output_folder.mkdir(exist_ok=True)
    if not args.continue_run:  # nothing of another run may stay beside this run's outputs
        for name in (*OUTPUT_FILES, *(p.name for p in output_folder.glob(f"{PAPER_TABLE_PREFIX}*"))):
            (output_folder / name).unlink(missing_ok=True)
        if args.save_predictions and (output_folder / "predictions").exists():  # only with --overwrite (above)
            shutil.rmtree(output_folder / "predictions")
    write_text_atomic(output_folder / SETTINGS_FILE, json.dumps(settings, indent=2))
    done = set(zip(earlier["case"].astype(str), earlier["subset"].astype(str)))
    rows = earlier.to_dict("records")  # all of them, also of cases outside --cases: nothing is lost
    print(f"Evaluating {len(cases)} case(s) x {len(subsets)} modality subsets of {', '.join(names)}; regions: "
          f"{', '.join(f'{r.name} {r.labels}' for r in regions)}"
          + (f"; continuing: {len(rows)} prediction(s) already in {output_folder / 'per_case.csv'}" if rows else ""))

    def add_row(row: dict) -> None:
        rows.append(row)
        write_per_case(output_folder / "per_case.csv", pd.DataFrame(rows, columns=columns))

    start = time.time()
    _, case_failures = evaluate_subsets(
        predictor, cases, subsets, args.hd95_empty_penalty, args.exact_preprocessing,
        output_folder / "predictions" if args.save_predictions else None, not args.disable_progress_bar,
        regions, done, add_row)
    failures += case_failures
    per_case = pd.DataFrame(rows, columns=columns)
    if per_case.empty:
        raise DataError("no case could be evaluated")
    subset_names = [subset_name(m, names) for m in subsets]
    summary = summarize(per_case, subset_names, region_names)
    metadata = {
        **settings, "trainer": predictor.trainer_name,
        "subsets": subset_names, "cases": sorted(per_case["case"].astype(str).unique().tolist()),
        "failed_cases": [{"case": e.case_id, "file": e.file, "reason": e.reason} for e in failures],
        "preprocessing": "per subset from the zero-filled raw case" if args.exact_preprocessing
        else "once per case with all channels; missing channels zeroed after preprocessing",
        "hd95_empty_penalty_mm": args.hd95_empty_penalty,
        "conventions": {"Dice": DICE_RULE, "HD95": HD95_RULE,
                        "HD95 penalty": penalty_description(args.hd95_empty_penalty),
                        "mean over subsets": "unweighted mean of the 2^M-1 subset means",
                        "missing modality": "channel zeroed and declared missing to the network (exactly zero fusion weight)",
                        **({"ET post-processing": f"'(post-processed)' columns: an ET prediction under "
                                                  f"{args.et_postprocess_voxels} voxels counts as empty"}
                           if args.et_postprocess_voxels else {})},
        "seconds": round(time.time() - start, 1),
    }
    paths = list(write_report(output_folder, per_case, summary, region_names, metadata).values())
    order = "paper" if paper_subset_order(names) is not None else "ours"
    markdown, table_paths = write_paper_table(output_folder, per_case, names, order, "Dice")
    print((output_folder / "summary.md").read_text())
    if order == "paper":
        print(f"In the published papers' subset order:\n\n{markdown}")
    print("Wrote " + ", ".join(str(p) for p in paths + table_paths))
    if failures:
        print(f"{len(failures)} case(s) could not be evaluated:", file=sys.stderr)
        for error in failures:
            print(f"  FAILED {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    main()
