"""The prediction output folder: creating it, leftovers of killed runs, existing outputs, run record.

* Leftovers: temporary files of a run that was killed outright (SIGKILL, power loss) are hidden
  ``.CASE.partial-XXXXXXXX...`` files (see :mod:`nnunetv2_dmaf.atomic_files`); the next run into the
  folder removes them and says so.
* Existing outputs: a case whose output files exist is refused (an error naming the file) unless
  ``--overwrite`` (predicted again) or ``--continue_prediction`` (skipped if every file is complete;
  predicted again if one is missing or incomplete, a cut-off file is never taken as done, or if the
  run record lists the case as stale, see below).
* Run record ``dmaf_predict_args.json``: the call's arguments, the settings that determine the
  result (model folder, folds used, checkpoint and the SHA-256 of each fold's file, step size,
  mirroring, declared-missing channels) and, per
  predicted case, its missing channels. A run whose settings differ from the record of a folder that
  already holds outputs is refused unless ``--overwrite``, so the record always describes the files:
  an ``--overwrite`` run with other settings that does not predict every case of the old record
  lists the others under ``stale`` (made with the old settings), and ``--continue_prediction``
  predicts those again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

from nnunetv2_dmaf.atomic_files import remove_partial_outputs, write_text_atomic
from nnunetv2_dmaf.inference.cases import CaseFiles, CaseInputError
from nnunetv2_dmaf.inference.export import output_endings
from nnunetv2_dmaf.inference.file_integrity import output_file_problem
from nnunetv2_dmaf.user_errors import DataError, UsageError

ARGS_FILE = "dmaf_predict_args.json"
#: arguments that change the predicted files (the rest, e.g. -npp, only change how the run goes)
RESULT_SETTINGS = ("model_folder", "f", "chk", "checkpoint_sha256", "step_size", "disable_tta", "declared_missing",
                   "save_probabilities")


@dataclass
class CaseJob:
    """One case to predict: its files and the output path without file ending (nnU-Net's 'ofile')."""
    case: CaseFiles
    output_truncated: Path


def prepare_output_folder(folder: Path) -> list[Path]:
    """Creates ``folder`` (with parents) and removes leftovers of killed runs; returns what was removed."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"-o {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"-o {folder}: cannot create the output folder ({error.strerror})") from None
    return remove_partial_outputs(folder)


def plan_jobs(cases: Iterable[CaseFiles], output_folder: Path, file_ending: str, save_probabilities: bool,
              overwrite: bool, continue_prediction: bool, stale_cases: Collection[str] = ()
              ) -> tuple[list[CaseJob], list[str], list[CaseInputError], list[str]]:
    """Applies the existing-output policy (module docstring). ``stale_cases``: the cases the folder's
    run record lists as made with other settings (:func:`stale_case_ids`).

    Returns (jobs, skipped case ids, refused cases as errors, notes on outputs predicted again).
    """
    jobs, skipped, refused, notes = [], [], [], []
    endings = output_endings(file_ending, save_probabilities)
    for case in cases:
        truncated = output_folder / case.case_id
        files = [Path(f"{truncated}{e}") for e in endings]
        existing = [f for f in files if f.exists()]
        if existing and not overwrite:
            if not continue_prediction:
                refused.append(CaseInputError(case.case_id, existing[-1], "output already exists; not overwritten "
                                                                          "(pass --overwrite to replace it, or "
                                                                          "--continue_prediction to skip such cases)"))
                continue
            problems = [(f, "missing") for f in files if not f.exists()]
            problems += [(f, p) for f in existing if (p := output_file_problem(f)) is not None]
            if problems:
                notes.append(f"{case.case_id}: predicting again, the existing output {problems[0][0].name} is "
                             f"incomplete ({problems[0][1]})")
            elif case.case_id in stale_cases:
                notes.append(f"{case.case_id}: predicting again, {existing[0].name} was made with other settings "
                             f"(stale in {ARGS_FILE})")
            else:
                skipped.append(case.case_id)
                continue
        jobs.append(CaseJob(case, truncated))
    return jobs, skipped, refused, notes


def prediction_settings(arguments: Mapping, model_folder: Path, declared_missing: Sequence[str],
                        checkpoint_sha256: Mapping[str, str]) -> dict:
    """The settings that determine the predicted files (compared between runs into one folder): ``f``
    is the folds used (also when -f was left out), ``checkpoint_sha256`` their checkpoints' digests."""
    values = {**arguments, "model_folder": str(model_folder.resolve()), "declared_missing": list(declared_missing),
              "f": list(checkpoint_sha256), "checkpoint_sha256": dict(checkpoint_sha256)}
    return {k: values.get(k) for k in RESULT_SETTINGS}


def read_run_record(output_folder: Path) -> dict | None:
    """The folder's run record, None if there is none; an unreadable one counts as empty ({})."""
    path = output_folder / ARGS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def stale_case_ids(record: dict | None) -> set[str]:
    """The case ids a run record lists as made with settings other than its own (module docstring)."""
    stale = (record or {}).get("stale")
    return {str(c) for c in stale} if isinstance(stale, list) else set()


def check_settings_match(output_folder: Path, settings: dict, record: dict | None, has_outputs: bool) -> None:
    """UsageError if the folder holds outputs of a run with other settings (module docstring)."""
    if record is None or not has_outputs:
        return
    previous = record.get("settings")
    if previous == settings:
        return
    if not isinstance(previous, dict):
        differences = f"{ARGS_FILE} has no readable settings"
    else:
        differences = "; ".join(f"{k}: {previous.get(k)!r} before, {settings[k]!r} now"
                                for k in settings if previous.get(k) != settings[k])
    raise UsageError(f"-o {output_folder} holds predictions made with other settings ({differences}); "
                     f"use another output folder, or --overwrite to predict these cases again with the new "
                     f"settings")


def write_run_record(output_folder: Path, arguments: dict, settings: dict, predicted: Mapping[str, list[str]],
                     previous: dict | None) -> None:
    """Writes the run record (atomically). Cases of a previous record with the same settings are kept;
    with other settings (an ``--overwrite`` run) its cases that this run did not predict become stale."""
    cases, stale = {}, stale_case_ids(previous)
    if previous and isinstance(previous.get("cases"), dict):
        if previous.get("settings") == settings:
            cases.update(previous["cases"])
        else:
            stale |= set(previous["cases"])
    cases.update({case_id: {"missing": missing} for case_id, missing in predicted.items()})
    stale -= set(predicted)
    record = {"settings": settings, "arguments": arguments, "cases": dict(sorted(cases.items()))}
    if stale:
        record["stale"] = sorted(stale)
    write_text_atomic(output_folder / ARGS_FILE, json.dumps(record, indent=4, default=str))


def write_model_files(output_folder: Path, dataset_json: dict, plans: dict, overwrite: bool) -> None:
    """dataset.json and plans.json as nnUNetv2_predict writes them (atomically); an existing different
    file is kept unless ``overwrite``."""
    for name, content in (("dataset.json", dataset_json), ("plans.json", plans)):
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
        write_text_atomic(path, text)
