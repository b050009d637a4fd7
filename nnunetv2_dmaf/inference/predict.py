"""``nnUNetv2_dmaf_predict``: nnUNetv2_predict for DMAF-Net models on cases with missing channels.

Usage (same options as nnUNetv2_predict, plus ``--missing`` and ``--overwrite``)::

    nnUNetv2_dmaf_predict -i INPUT -o OUTPUT -d 990 -c 3d_fullres -f 0 [-tr nnUNetTrainerDMAF]
        [--missing T1ce FLAIR] [--overwrite | --continue_prediction] [--disable_tta] [-device cpu]

* Cases are the ``CASE_XXXX<ending>`` files of INPUT grouped by CASE. A case may lack channel files:
  those channels are missing. ``--missing`` (names from dataset.json, case-insensitive, or indices)
  declares channels missing for every case, even where their files exist.
* A missing channel is filled with zeros (the present channels' geometry), the case goes through
  nnU-Net's own preprocessing, the missing channels are zeroed again after normalisation, and the
  network gets the explicit modality mask (its encoders for missing channels are not run). The
  output files are those of nnUNetv2_predict (``CASE<ending>``, same geometry; ``.npz``/``.pkl``
  with ``--save_probabilities``).
* A case with bad input (channel index beyond the model's channels, files of one case differing in
  shape/spacing/origin/direction, a file that is not a readable image, several channels in one
  file) is reported with the case and file; the other cases are still predicted.
* Existing outputs: by default a case whose output file exists is not predicted and counts as an
  error ("pass --overwrite or --continue_prediction"); ``--continue_prediction`` skips it silently
  (nnU-Net's meaning), ``--overwrite`` replaces it.
* Exit status: 0 if every case was predicted or skipped, 1 if any case failed, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from nnunetv2_dmaf.inference.cases import CaseFiles, CaseInputError, discover_cases, load_case
from nnunetv2_dmaf.modalities import ModalityMask, channel_names_from_dataset_json, parse_channels
from nnunetv2_dmaf.inference.model_options import add_model_arguments, model_dataset_json, model_folder_from_args

if TYPE_CHECKING:  # torch and nnU-Net are imported only when a model is loaded (fast usage errors)
    import torch

    from nnunetv2_dmaf.inference.predictor import DMAFPredictor

ARGS_FILE = "dmaf_predict_args.json"


@dataclass
class CaseJob:
    """One case to predict: its files and the output path without file ending (nnU-Net's 'ofile')."""
    case: CaseFiles
    output_truncated: Path


@dataclass
class PredictionReport:
    """Outcome per case: predicted (with the mask used), skipped (existing output), failed."""
    predicted: dict[str, ModalityMask] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseInputError] = field(default_factory=list)

    def fail(self, error: CaseInputError) -> None:
        self.failed.append(error)
        print(f"ERROR {error}", file=sys.stderr, flush=True)


def output_files(output_truncated: Path, file_ending: str, save_probabilities: bool) -> list[Path]:
    """The files nnU-Net's export writes for one case."""
    files = [Path(f"{output_truncated}{file_ending}")]
    if save_probabilities:
        files += [Path(f"{output_truncated}.npz"), Path(f"{output_truncated}.pkl")]
    return files


def plan_jobs(cases: Iterable[CaseFiles], output_folder: Path, file_ending: str, save_probabilities: bool,
              overwrite: bool, continue_prediction: bool, report: PredictionReport) -> list[CaseJob]:
    """Applies the existing-output policy (see module docstring); returns the cases to predict."""
    jobs = []
    for case in cases:
        truncated = output_folder / case.case_id
        existing = [f for f in output_files(truncated, file_ending, save_probabilities) if f.exists()]
        if existing and not overwrite:
            if continue_prediction:
                report.skipped.append(case.case_id)
                continue
            report.fail(CaseInputError(case.case_id, existing[0], "output already exists; not overwritten (pass "
                                                                  "--overwrite to replace it, or "
                                                                  "--continue_prediction to skip such cases)"))
            continue
        jobs.append(CaseJob(case, truncated))
    return jobs


@dataclass
class _Prepared:
    job: CaseJob
    mask: ModalityMask
    data: torch.Tensor
    properties: dict


def _prepare(predictor: DMAFPredictor, job: CaseJob, declared_missing: Sequence[int]) -> _Prepared:
    """Loads (zero-filling missing channels) and preprocesses one case; errors name case and file."""
    from nnunetv2_dmaf.inference.predictor import zero_missing_channels
    loaded = load_case(job.case, predictor.channel_names, predictor.plans_manager.image_reader_writer_class(),
                       declared_missing)
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
    with ThreadPoolExecutor(max_workers=workers) as pool:
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


def predict_cases(predictor: DMAFPredictor, jobs: Sequence[CaseJob], declared_missing: Sequence[int] = (),
                  save_probabilities: bool = False, num_processes_preprocessing: int = 1,
                  num_processes_export: int = 1, report: PredictionReport | None = None) -> PredictionReport:
    """Predicts ``jobs`` with nnU-Net's machinery, each with its own modality mask.

    With ``num_processes_export`` >= 1, nnU-Net's ``predict_from_data_iterator`` runs the network and
    exports in background processes; the mask of a case is set on the network when the iterator hands
    the case over (nnU-Net predicts each item before requesting the next one). With 0, everything
    runs in this process.
    """
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    report = report if report is not None else PredictionReport()
    cases = prepared_cases(predictor, jobs, declared_missing, num_processes_preprocessing, report)
    try:
        if num_processes_export >= 1:
            def items() -> Iterator[dict]:
                for prepared in cases:
                    predictor.set_modality_mask(prepared.mask)
                    report.predicted[prepared.job.case.case_id] = prepared.mask
                    yield {"data": prepared.data, "data_properties": prepared.properties,
                           "ofile": str(prepared.job.output_truncated)}

            predictor.predict_from_data_iterator(items(), save_probabilities, num_processes_export)
        else:
            for prepared in cases:
                logits = predictor.predict_logits(prepared.data, prepared.mask)
                export_prediction_from_logits(logits, prepared.properties, predictor.configuration_manager,
                                              predictor.plans_manager, predictor.dataset_json,
                                              str(prepared.job.output_truncated), save_probabilities)
                report.predicted[prepared.job.case.case_id] = prepared.mask
    finally:
        predictor.set_modality_mask(None)
    return report


def write_metadata(predictor: DMAFPredictor, output_folder: Path, arguments: dict, overwrite: bool) -> None:
    """dataset.json and plans.json (as nnUNetv2_predict writes them) and the call's arguments; an
    existing different file is kept unless ``overwrite``."""
    contents = {"dataset.json": predictor.dataset_json, "plans.json": predictor.plans_manager.plans,
                ARGS_FILE: arguments}
    for name, content in contents.items():
        path = output_folder / name
        text = json.dumps(content, indent=4, sort_keys=False, default=str)
        if path.exists() and not overwrite:
            try:
                same = json.loads(path.read_text()) == json.loads(text)
            except (OSError, ValueError):
                same = False
            if not same:
                print(f"Note: kept the existing {path} (differs from this run's; --overwrite replaces it)")
            continue
        path.write_text(text)


def print_summary(report: PredictionReport, names: Sequence[str]) -> None:
    print(f"\nSummary: {len(report.predicted)} predicted, {len(report.skipped)} skipped (output exists, "
          f"--continue_prediction), {len(report.failed)} failed")
    for case_id, mask in sorted(report.predicted.items()):
        missing = [n for n, p in zip(names, mask) if not p]
        print(f"  predicted {case_id}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    for case_id in report.skipped:
        print(f"  skipped   {case_id}")
    if report.failed:
        print(f"{len(report.failed)} case(s) failed:", file=sys.stderr)
        for error in report.failed:
            print(f"  FAILED {error}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
                          help="skip cases whose output exists (continue an aborted run)")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also export probabilities (.npz + .pkl), as nnUNetv2_predict")
    parser.add_argument("-npp", type=int, default=1, help="threads loading/preprocessing ahead (default: %(default)s)")
    parser.add_argument("-nps", type=int, default=1,
                        help="processes exporting segmentations; 0 = export in this process (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    input_folder, output_folder = Path(args.i), Path(args.o)
    if not input_folder.is_dir():
        parser.exit(2, f"error: input folder {input_folder} does not exist\n")
    if output_folder.resolve() == input_folder.resolve():
        parser.exit(2, "error: -o must differ from -i (outputs would be mixed with the input images)\n")
    try:
        model_folder = model_folder_from_args(args)
        dataset_json = model_dataset_json(model_folder)
        names = channel_names_from_dataset_json(dataset_json)
        declared_missing = parse_channels(args.missing, names)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    if len(declared_missing) == len(names):
        parser.exit(2, "error: --missing declares every channel missing\n")

    file_ending = dataset_json["file_ending"]
    report = PredictionReport()
    cases, naming_errors = discover_cases(input_folder, file_ending)
    for error in naming_errors:
        report.fail(error)
    if not cases and not naming_errors:
        parser.exit(1, f"error: no files ending with {file_ending} in {input_folder}\n")
    output_folder.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(cases, output_folder, file_ending, args.save_probabilities, args.overwrite,
                     args.continue_prediction, report)
    print(f"{len(cases)} case(s) in {input_folder}; predicting {len(jobs)}; channels: "
          f"{', '.join(f'{i:04d}={n}' for i, n in enumerate(names))}"
          + (f"; declared missing: {', '.join(names[i] for i in declared_missing)}" if declared_missing else ""))
    if jobs:
        from nnunetv2_dmaf.inference.predictor import predictor_from_args
        try:
            predictor = predictor_from_args(args)
        except (ValueError, FileNotFoundError, TypeError) as error:
            parser.exit(2, f"error: {error}\n")
        write_metadata(predictor, output_folder, {**vars(args), "model_folder": str(model_folder),
                                                  "channel_names": names,
                                                  "declared_missing": [names[i] for i in declared_missing]},
                       args.overwrite)
        predict_cases(predictor, jobs, declared_missing, args.save_probabilities, args.npp, args.nps, report)
    print_summary(report, names)
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
