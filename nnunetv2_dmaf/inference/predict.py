"""``nnUNetv2_dmaf_predict``: nnUNetv2_predict for DMAF-Net models on cases with missing channels.

Usage (same options as nnUNetv2_predict, plus ``--missing`` and ``--overwrite``)::

    nnUNetv2_dmaf_predict -i INPUT -o OUTPUT -d 990 -c 3d_fullres -f 0 [-tr nnUNetTrainerDMAF]
        [--missing T1ce FLAIR] [--overwrite | --continue_prediction] [--disable_tta] [-device cpu]

* Cases are the ``CASE_XXXX<ending>`` files of INPUT grouped by CASE. A case may lack channel files:
  those channels are missing. ``--missing`` (names from dataset.json, case-insensitive, or indices)
  declares channels missing for every case, even where their files exist.
* A missing channel is filled with zeros (the present channels' geometry), the case goes through
  nnU-Net's own preprocessing, the missing channels are zeroed again after normalisation, and the
  network gets the explicit modality mask (the fusion gives missing channels zero weight). The
  output files are those of nnUNetv2_predict (``CASE<ending>``, same geometry; ``.npz``/``.pkl``
  with ``--save_probabilities``).
* Every input file is verified before use (:mod:`nnunetv2_dmaf.inference.cases`): a case with bad
  input (truncated/corrupt/empty file, NaN voxels, an image of the wrong dimensionality for the
  model, a channel index beyond the model's channels, files of one case differing in
  shape/spacing/origin/direction, several channels in one file) is reported with the case and file;
  the other cases are still predicted. Files that belong to no case are reported, never predicted.
* Outputs are written atomically (:mod:`nnunetv2_dmaf.inference.export`); leftovers of killed runs,
  existing outputs and the run record: :mod:`nnunetv2_dmaf.inference.output_folder`.
* Exit status: 0 if every case was predicted or skipped, 1 if any case or input file failed (or a
  data error), 2 for usage errors, 130 for Ctrl-C/SIGTERM (one line each, no traceback).
"""
from __future__ import annotations

import argparse
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.inference.cases import CaseFiles, CaseInputError, StrayFileError, discover_cases, load_case
from nnunetv2_dmaf.inference.model_options import (add_model_arguments, check_model_arguments, model_channel_names,
                                                   model_dataset_json, model_folder_from_args)
from nnunetv2_dmaf.inference.output_folder import (CaseJob, check_settings_match, plan_jobs, prediction_settings,
                                                   prepare_output_folder, read_run_record, stale_case_ids,
                                                   write_model_files, write_run_record)
from nnunetv2_dmaf.modalities import ModalityMask, parse_channels
from nnunetv2_dmaf.user_errors import DataError, UsageError, one_line, run_main

if TYPE_CHECKING:  # torch and nnU-Net are imported only when a model is loaded (fast usage errors)
    import torch

    from nnunetv2_dmaf.inference.predictor import DMAFPredictor


@dataclass
class PredictionReport:
    """Outcome per case: predicted (with the mask used; once its files are written), skipped
    (complete output exists), failed; and input files that belong to no case (stray)."""
    predicted: dict[str, ModalityMask] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseInputError] = field(default_factory=list)
    stray: list[StrayFileError] = field(default_factory=list)

    def fail(self, error: CaseInputError) -> None:
        (self.stray if isinstance(error, StrayFileError) else self.failed).append(error)
        print(f"ERROR {error}", file=sys.stderr, flush=True)


@dataclass
class _Prepared:
    job: CaseJob
    mask: ModalityMask
    data: torch.Tensor
    properties: dict


def _prepare(predictor: DMAFPredictor, job: CaseJob, declared_missing: Sequence[int]) -> _Prepared:
    """Verifies, loads (zero-filling missing channels) and preprocesses one case; errors name case and file."""
    from nnunetv2_dmaf.inference.predictor import zero_missing_channels
    loaded = load_case(job.case, predictor.channel_names, predictor.plans_manager.image_reader_writer_class(),
                       declared_missing, predictor.allowed_image_dims, predictor.model_description)
    try:
        data, properties = predictor.preprocess(loaded.data, loaded.properties)
    except Exception as error:
        raise CaseInputError(job.case.case_id, None, f"nnU-Net preprocessing failed: {error}") from error
    return _Prepared(job, loaded.mask, zero_missing_channels(data, loaded.mask), properties)


def _describe(mask: ModalityMask, case: CaseFiles, names: Sequence[str]) -> str:
    present = [n for n, p in zip(names, mask) if p]
    absent = [n for i, (n, p) in enumerate(zip(names, mask)) if not p and i not in case.files]
    declared = [n for i, (n, p) in enumerate(zip(names, mask)) if not p and i in case.files]
    text = f"present: {', '.join(present)}"
    if absent:
        text += f"; missing (no file): {', '.join(absent)}"
    if declared:
        text += f"; missing (--missing): {', '.join(declared)}"
    return text


def prepared_cases(predictor: DMAFPredictor, jobs: Sequence[CaseJob], declared_missing: Sequence[int],
                   num_workers: int, report: PredictionReport) -> Iterator[_Prepared]:
    """Loads and preprocesses cases in ``num_workers`` background threads, in order; failed cases go to
    ``report`` and are left out."""
    workers = max(1, num_workers)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        remaining = iter(jobs)
        pending: deque = deque()

        def submit_next() -> None:
            job = next(remaining, None)
            if job is not None:
                pending.append((job, pool.submit(_prepare, predictor, job, declared_missing)))

        for _ in range(workers + 1):
            submit_next()
        while pending:
            job, future = pending.popleft()
            submit_next()
            try:
                prepared = future.result()
            except CaseInputError as error:
                report.fail(error)
                continue
            except Exception as error:  # an unexpected failure of one case must not stop the others
                report.fail(CaseInputError(job.case.case_id, None, f"could not be loaded: {error}"))
                continue
            print(f"{job.case.case_id}: {_describe(prepared.mask, job.case, predictor.channel_names)}", flush=True)
            yield prepared
    finally:  # on Ctrl-C do not start the queued cases
        pool.shutdown(wait=False, cancel_futures=True)


def predict_cases(predictor: DMAFPredictor, jobs: Sequence[CaseJob], declared_missing: Sequence[int] = (),
                  save_probabilities: bool = False, num_processes_preprocessing: int = 1,
                  num_processes_export: int = 1, report: PredictionReport | None = None) -> PredictionReport:
    """Predicts ``jobs`` with nnU-Net's machinery, each with its own modality mask, and exports them
    atomically (``num_processes_export`` background processes; 0 = in this process). A case counts
    as predicted once its files are written; an export failure fails only that case."""
    from nnunetv2_dmaf.inference.export import ExportQueue

    report = report if report is not None else PredictionReport()
    masks: dict[str, ModalityMask] = {}

    def done(case_id: str) -> None:
        report.predicted[case_id] = masks[case_id]

    def export_failed(case_id: str, error: BaseException) -> None:
        report.fail(CaseInputError(case_id, None, f"writing the prediction failed ({type(error).__name__}: "
                                                  f"{one_line(error)})"))

    with ExportQueue(num_processes_export, done, export_failed) as exports:
        for prepared in prepared_cases(predictor, jobs, declared_missing, num_processes_preprocessing, report):
            case_id = prepared.job.case.case_id
            logits = predictor.predict_logits(prepared.data, prepared.mask).cpu().numpy()
            masks[case_id] = prepared.mask
            exports.submit(case_id, logits, prepared.properties, predictor, prepared.job.output_truncated,
                           save_probabilities)
    return report


def print_summary(report: PredictionReport, names: Sequence[str]) -> None:
    print(f"\nSummary: {len(report.predicted)} predicted, {len(report.skipped)} skipped (complete output exists, "
          f"--continue_prediction), {len(report.failed)} failed"
          + (f", {len(report.stray)} input file(s) ignored" if report.stray else ""))
    for case_id, mask in sorted(report.predicted.items()):
        missing = [n for n, p in zip(names, mask) if not p]
        print(f"  predicted {case_id}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    for case_id in report.skipped:
        print(f"  skipped   {case_id}")
    if report.failed:
        print(f"{len(report.failed)} case(s) failed:", file=sys.stderr)
        for error in report.failed:
            print(f"  FAILED {error}", file=sys.stderr)
    if report.stray:
        print(f"{len(report.stray)} input file(s) belong to no case and were ignored:", file=sys.stderr)
        for error in report.stray:
            print(f"  IGNORED {error}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_predict",
        description="Predict with a DMAF-Net nnU-Net model on cases that may lack channels: absent "
                    "CASE_XXXX files (or channels named with --missing) are filled with zeros and declared "
                    "missing to the network. Output as nnUNetv2_predict.")
    parser.add_argument("-i", required=True, help="input folder with CASE_XXXX<ending> files")
    parser.add_argument("-o", required=True, help="output folder (created if needed)")
    add_model_arguments(parser)
    parser.add_argument("--missing", nargs="+", metavar="CHANNEL", default=[],
                        help="channels missing in every case (dataset.json names, case-insensitive, or indices); "
                             "their files are ignored if present")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing output files")
    existing.add_argument("--continue_prediction", "--c", action="store_true",
                          help="skip cases whose output exists and is complete (continue an aborted run)")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also export probabilities (.npz + .pkl), as nnUNetv2_predict")
    parser.add_argument("-npp", type=int, default=1, help="threads loading/preprocessing ahead (default: %(default)s)")
    parser.add_argument("-nps", type=int, default=1,
                        help="processes exporting segmentations; 0 = export in this process (default: %(default)s)")
    return parser


def _check_folders(input_folder: Path, output_folder: Path) -> None:
    if not input_folder.is_dir():
        raise UsageError(f"-i {input_folder}: " + ("is not a folder" if input_folder.exists() else "does not exist"))
    if output_folder.resolve() == input_folder.resolve():
        raise UsageError("-o must differ from -i (outputs would be mixed with the input images)")
    if output_folder.exists() and not output_folder.is_dir():
        raise UsageError(f"-o {output_folder}: exists and is not a folder")


def predict_command(argv: Sequence[str] | None = None) -> int:
    """The command's work; returns the exit status. User errors raise UsageError/DataError."""
    args = build_parser().parse_args(argv)
    input_folder, output_folder = Path(args.i), Path(args.o)
    _check_folders(input_folder, output_folder)
    if args.npp < 1:
        raise UsageError(f"-npp {args.npp}: must be at least 1")
    if args.nps < 0:
        raise UsageError(f"-nps {args.nps}: must be 0 (export in this process) or more")
    check_model_arguments(args)
    model_folder = model_folder_from_args(args)
    dataset_json = model_dataset_json(model_folder)
    names = model_channel_names(model_folder, dataset_json)
    try:
        declared_missing = parse_channels(args.missing, names)
    except ValueError as error:
        raise UsageError(f"--missing: {error}") from None
    if len(declared_missing) == len(names):
        raise UsageError("--missing declares every channel missing")

    file_ending = dataset_json["file_ending"]
    report = PredictionReport()
    cases, naming_errors = discover_cases(input_folder, file_ending)
    for error in naming_errors:
        report.fail(error)
    if not cases:
        raise DataError(f"-i {input_folder}: no channel files CASE_XXXX{file_ending}"
                        + (f" ({len(naming_errors)} other file(s) reported above)" if naming_errors else ""))
    from nnunetv2_dmaf.inference.predictor import checked_folds, checkpoint_digests, load_predictor
    folds = checked_folds(args, model_folder)  # an untrained -f, a wrong -chk, no CUDA: refused before -o is touched
    settings = prediction_settings(vars(args), model_folder, [names[i] for i in declared_missing],
                                   checkpoint_digests(model_folder, folds, args.chk))
    record = read_run_record(output_folder) if output_folder.is_dir() else None
    if not args.overwrite:
        has_outputs = output_folder.is_dir() and any(output_folder.glob(f"*{file_ending}"))
        check_settings_match(output_folder, settings, record, has_outputs)
    jobs, report.skipped, refused, notes = plan_jobs(cases, output_folder, file_ending, args.save_probabilities,
                                                     args.overwrite, args.continue_prediction,
                                                     stale_case_ids(record))
    for error in refused:
        report.fail(error)
    for note in notes:
        print(f"Note: {note}")
    print(f"{len(cases)} case(s) in {input_folder}; predicting {len(jobs)}; channels: "
          f"{', '.join(f'{i:04d}={n}' for i, n in enumerate(names))}"
          + (f"; declared missing: {', '.join(names[i] for i in declared_missing)}" if declared_missing else ""))
    predictor = load_predictor(args, model_folder, folds) if jobs else None  # unusable model: -o not touched
    removed = prepare_output_folder(output_folder)
    if removed:
        print(f"Removed {len(removed)} leftover temporary file(s) of an interrupted earlier run in {output_folder}: "
              f"{', '.join(p.name for p in removed)}")
    if predictor is not None:
        write_model_files(output_folder, predictor.dataset_json, predictor.plans_manager.plans, args.overwrite)
        arguments = {**vars(args), "model_folder": str(model_folder), "channel_names": names}
        try:
            predict_cases(predictor, jobs, declared_missing, args.save_probabilities, args.npp, args.nps, report)
        finally:  # also after Ctrl-C: the record lists exactly the cases whose files were written
            write_run_record(output_folder, arguments, settings,
                             {c: [n for n, p in zip(names, m) if not p] for c, m in report.predicted.items()},
                             record)
    print_summary(report, names)
    return 1 if report.failed or report.stray else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``nnUNetv2_dmaf_predict``: one-line errors, exit status as documented."""
    run_main(predict_command, argv)


if __name__ == "__main__":
    main()
