"""Quality benchmark: does DMAF-Net beat fair baselines under imbalanced missing modalities?

Data: BraTS-like cases built from the real MNI ICBM152 anatomy (``nnunetv2_dmaf.anatomical_phantom``;
needs ``pip install ".[benchmark]"``), ``--num-training`` training cases with a per-case availability
table that reproduces the published mr2468 table's realised rates (FLAIR 59 %, T1ce 38 %, T1 16 %,
T2 80 % missing, every one of the 15 subsets occurring), and ``--num-test`` complete test cases.

Trainers (all with the same plans, schedule, fold 0 and availability table; see TRAINERS):
(a) nnU-Net's U-Net on the zero-filled data, (b) (a) + uniform channel dropout within each case's
available set, (c) DMAF-Net, four ablations of (c) and the variants of (c) in VARIANTS. Each (trainer, seed) trains once with
``nnUNet_dmaf_seed=<seed>`` in its own nnUNet_results root, then ``nnUNetv2_dmaf_evaluate_subsets``
scores the test cases on all 15 subsets (no TTA).

Plans: nnU-Net's 3d_fullres plans of the generated dataset with an added configuration
``3d_quality`` (inherits 3d_fullres: same preprocessed data and patch = the whole cropped volume;
``--features`` first-stage width, doubled per stage; ``--batch-size``), so that training converges
on a 2-core CPU. With ``--full-size-plans`` every trainer uses nnU-Net's own ``3d_fullres`` plans
unchanged instead (widths, batch size and patch as nnU-Net planned them; meant for a GPU); these
runs have run records and a docs block of their own.

Resumable: everything lives in ``--work-dir``; a finished (trainer, seed) is never retrained or
re-evaluated, an interrupted training continues from its last checkpoint (every 5 epochs). The
settings are stored in ``settings.json``; a later run with other data/schedule settings is refused.

Run records: every finished (trainer, seed) is also written as one JSON file (its subset
evaluation, training curves and the commit it was trained and evaluated with) into
``--records``/<settings>/ (default ``benchmarks/quality_records/``, committed with the code). The
tables are made from these records, so runs of one setting add up over sessions and machines
whose work dirs are gone: the generated data are the same for the same settings (seeded), and a
recorded (trainer, seed) is not trained again. That the data are the same is checked: the first run
of a data setting stores the fingerprint of its data (``data_path``: ``data-<data settings>.json``
beside the records folders), and a work dir with other data (another generator or nilearn version)
is refused before it is planned, trained or recorded (``check_data``).

At the end (and with ``--report-only`` at any time, from whatever has finished) it prints the
tables, writes them into the marked block of ``docs/benchmarks.md`` and the plots into
``docs/figures/quality_*.png``. Settings other than the defaults (e.g. ``--epochs 200``, the plateau
check) have a block and plots of their own, named by their records folder (``docs_markers``). The
overview table has a convergence column: the validation pseudo-Dice over the last 10 % of the
epochs and its change against the 10 % before (``plateau``). A second overview scores each region
only on the test cases whose reference contains it (``without_empty_references``; the cases are
stored in each run record, older records look them up in the work dir or the seeded generator): a
test case without ET scores ET Dice 1 or 0 per subset, which makes the first table's ET and mean
columns jump between seeds. With the default records the README's comparison table (its marked
block) is remade from the records of README_COLUMNS' settings as well.

Usage::

    python benchmarks/quality.py --work-dir /tmp/quality --seeds 0 1 2 [--device cpu] [--trainers ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "quality_records"
#: files whose changes change a training or evaluation (for the commit stored in the run records)
CODE_PATHS = ("nnunetv2_dmaf", "benchmarks/quality.py", "setup.py", "constraints-cpu.txt")
sys.path.insert(0, str(REPO))  # run from a checkout: the benchmark uses this checkout's helpers

from nnunetv2_dmaf.atomic_files import write_text_atomic  # noqa: E402
from nnunetv2_dmaf.availability import availability_table_path, write_availability_table  # noqa: E402
from nnunetv2_dmaf.channel_files import channel_file_name  # noqa: E402
from nnunetv2_dmaf.dataset_conversion.import_imbalanced_split import (  # noqa: E402
    TABLE_MODALITIES, read_split_table, table_to_channel_index)
from nnunetv2_dmaf.user_errors import DataError, UsageError, run_main  # noqa: E402

DATASET_ID = 995
DATASET_NAME = "DMAFQuality"
DATASET = f"Dataset{DATASET_ID}_{DATASET_NAME}"
BASE_CONFIGURATION = "3d_fullres"
CONFIGURATION = "3d_quality"
PLANS = "nnUNetPlans"
FOLD = "0"
PUBLISHED_TABLE = REPO.parent / "shared" / "data" / "imbalanced_splits" / "Brats2020_imb_split_mr2468.csv"
#: -tr name -> label in the tables; the first three are the comparison, the rest ablations of (c)
TRAINERS: dict[str, str] = {
    "nnUNetTrainerZeroFilled": "(a) U-Net, zero-filled",
    "nnUNetTrainerChannelDropout": "(b) (a) + channel dropout",
    "nnUNetTrainerDMAF": "(c) DMAF-Net",
    "nnUNetTrainerDMAF_noDistill": "(c) w/o distillation",
    "nnUNetTrainerDMAF_noDTM": "(c) w/o DTM",
    "nnUNetTrainerDMAF_noGapShrinkage": "(c) + DTM w/o gap shrinkage",
    "nnUNetTrainerDMAF_noUniDecoder": "(c) w/o uni-modal decoder",
    "nnUNetTrainerDMAF_meanFusion": "(c) mean fusion",
    "nnUNetTrainerDMAF_subsetSampling": "(c) + subset sampling",
    "nnUNetTrainerDMAF_singleModalityFusion": "(c) + single-modality fusion",
    "nnUNetTrainerDMAF_singleModalityFusion_025": "(c) + single-modality fusion, p=0.25",
    "nnUNetTrainerDMAF_singleModalityFusion_025_noDTM": "(c) + single-modality fusion, p=0.25, w/o DTM",
    "nnUNetTrainerDMAF_rebalanced": "(c) + single-modality fusion + case rebalancing",
    "nnUNetTrainerDMAF_sharedEncoder": "(c) + one encoder shared by the modalities",
    "nnUNetTrainerDMAF_sharedEncoderModalityNorms": "(c) + shared encoder, norms per modality",
}
BASELINES = ("nnUNetTrainerZeroFilled", "nnUNetTrainerChannelDropout")
DMAF = "nnUNetTrainerDMAF"
#: DMAF-Net variants that are candidates for the target too (not ablations)
VARIANTS = ("nnUNetTrainerDMAF_subsetSampling", "nnUNetTrainerDMAF_singleModalityFusion",
            "nnUNetTrainerDMAF_singleModalityFusion_025", "nnUNetTrainerDMAF_rebalanced",
            "nnUNetTrainerDMAF_noGapShrinkage", "nnUNetTrainerDMAF_singleModalityFusion_025_noDTM",
            "nnUNetTrainerDMAF_sharedEncoder", "nnUNetTrainerDMAF_sharedEncoderModalityNorms")
RARE_SUBSETS = ("T2", "FLAIR")  # the subsets of the rarest modalities in the mr2468 table
#: settings that change the data or the training; a work dir is only resumed with the same values
#: (plus ``full_size_plans``, stored only when set, so that the records of 3d_quality keep their names)
DATA_SETTINGS = ("num_training", "num_test", "spacing", "data_seed", "features", "batch_size", "epochs",
                 "iterations", "val_iterations")


# ------------------------------------------------------------------------------ availability table
def mr2468_subset_counts(num_cases: int, table_path: Path = PUBLISHED_TABLE) -> dict[tuple[bool, ...], int]:
    """Cases per modality subset (bool [4] in TABLE_MODALITIES order) for ``num_cases`` training cases:
    every subset at least once, the rest allocated so that the per-modality missing rates come as close
    as possible to the published table's realised rates (largest remainder, then greedy moves)."""
    split = read_split_table(table_path)
    if tuple(split.modalities) != tuple(TABLE_MODALITIES):
        raise DataError(f"{table_path}: expected the BraTS modalities {list(TABLE_MODALITIES)}, got {split.modalities}")
    published = np.array(list(split.masks.values()), dtype=bool)
    subsets = [tuple(bool(b) for b in np.array(list(np.binary_repr(i, 4)), dtype=int)) for i in range(1, 16)]
    if num_cases < len(subsets):
        raise UsageError(f"--num-training must be >= {len(subsets)} so that every modality subset occurs")
    frequency = np.array([np.all(published == s, axis=1).mean() for s in subsets])
    counts = np.ones(len(subsets), dtype=int)
    share = frequency * (num_cases - len(subsets))
    counts += np.floor(share).astype(int)
    for i in np.argsort(-(share - np.floor(share)))[:num_cases - counts.sum()]:
        counts[i] += 1
    masks = np.array(subsets, dtype=float)
    target = published.mean(0)

    def error(c: np.ndarray) -> float:
        return float((((c[:, None] * masks).sum(0) / c.sum() - target) ** 2).sum())

    improved = True
    while improved:  # move single cases between subsets while that brings the rates closer
        improved = False
        for src in range(len(subsets)):
            for dst in range(len(subsets)):
                if src != dst and counts[src] > 1:
                    moved = counts.copy()
                    moved[src] -= 1
                    moved[dst] += 1
                    if error(moved) < error(counts) - 1e-12:
                        counts, improved = moved, True
    return {s: int(c) for s, c in zip(subsets, counts)}


def write_mr2468_availability(dataset_folder: Path, case_ids: Sequence[str], channel_names: Sequence[str],
                              seed: int) -> dict[str, np.ndarray]:
    """Assigns the subsets of ``mr2468_subset_counts`` to the cases (seeded shuffle) and writes
    ``modality_availability.csv``; returns case id -> bool [M] in ``channel_names`` order."""
    counts = mr2468_subset_counts(len(case_ids))
    masks = [np.array(s, dtype=bool) for s, c in counts.items() for _ in range(c)]
    order = np.random.default_rng(seed).permutation(len(masks))
    to_channels = table_to_channel_index(channel_names)
    table = {case: masks[i][to_channels] for case, i in zip(case_ids, order)}
    write_availability_table(availability_table_path(dataset_folder), table, channel_names)
    return table


# ------------------------------------------------------------------------------ work dir and nnU-Net
def nnunet_env(work_dir: Path, seed: int | None = None, args: argparse.Namespace | None = None,
               threads: int = 1) -> dict:
    """nnU-Net variables of the work dir; one nnUNet_results root per seed; with ``args`` also the
    training schedule and seed for the plugin's trainers."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work_dir / "raw"), nnUNet_preprocessed=str(work_dir / "preprocessed"),
               nnUNet_results=str(work_dir / "results" / f"seed_{seed if seed is not None else 0}"),
               nnUNet_def_n_proc="1", nnUNet_compile="false", OMP_NUM_THREADS=str(threads))
    if args is not None:  # training: schedule and seed for the plugin's trainers
        env.update(nnUNet_dmaf_num_epochs=str(args.epochs), nnUNet_dmaf_iterations_per_epoch=str(args.iterations),
                   nnUNet_dmaf_val_iterations_per_epoch=str(args.val_iterations), nnUNet_dmaf_seed=str(seed))
        if args.device == "cpu":
            env["nnUNet_n_proc_DA"] = "0"
    return env


RUNNING: set[subprocess.Popen] = set()  # child processes of --jobs workers, stopped on Ctrl-C/SIGTERM


def stop_running() -> None:
    for process in list(RUNNING):
        process.terminate()
    for process in list(RUNNING):
        process.wait()


def run_quiet(cmd: list[str], env: dict, log: Path) -> None:
    """Runs a command with its output appended to ``log``; stops it on Ctrl-C/SIGTERM; a failure
    raises DataError naming the command and the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        process = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        RUNNING.add(process)
        try:
            returncode = process.wait()
        finally:
            RUNNING.discard(process)
    if returncode != 0:
        what = Path(cmd[0]).name + ("" if cmd[1] == "-c" else f" {cmd[1]}")
        raise DataError(f"{what} failed (exit {returncode}); "
                        f"see {log}")


def settings_of(args: argparse.Namespace) -> dict:
    """The data/schedule settings (DATA_SETTINGS, and ``full_size_plans`` when set) of a run."""
    settings = {k: getattr(args, k) for k in DATA_SETTINGS}
    if getattr(args, "full_size_plans", False):
        settings["full_size_plans"] = True
    return settings


def configuration_of(settings: dict) -> str:
    """The nnU-Net configuration every trainer of these settings trains and is evaluated with."""
    return BASE_CONFIGURATION if settings.get("full_size_plans") else CONFIGURATION


def work_dir_configuration(work_dir: Path) -> str:
    """``configuration_of`` the settings stored in the work dir (``check_settings``)."""
    return configuration_of(json.loads((work_dir / "settings.json").read_text()))


def check_settings(work_dir: Path, args: argparse.Namespace) -> None:
    """Stores the data/schedule settings on the first run; refuses to resume with different ones."""
    settings = settings_of(args)
    path = work_dir / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = [f"{k} {stored.get(k)} -> {settings.get(k)}" for k in {**stored, **settings}
                   if stored.get(k) != settings.get(k)]
        if changed:
            raise UsageError(f"{work_dir} holds a run with other settings ({'; '.join(changed)}); "
                             f"use another --work-dir or the stored values")
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(settings, indent=2))


def generate(work_dir: Path, args: argparse.Namespace) -> None:
    """The generated dataset and its availability table in ``<work_dir>/raw`` (kept when present)."""
    from nnunetv2_dmaf.anatomical_phantom import CHANNEL_NAMES, case_ids, generate_dataset
    raw = work_dir / "raw" / DATASET
    if not (raw / "dataset.json").is_file():
        print(f"generating {args.num_training} + {args.num_test} cases at {args.spacing:g} mm in {raw}", flush=True)
        generate_dataset(work_dir / "raw", DATASET_ID, DATASET_NAME, args.num_training, args.num_test,
                         args.spacing, args.data_seed, overwrite=True)
    if not availability_table_path(raw).is_file():
        write_mr2468_availability(raw, case_ids(DATASET_NAME, args.num_training, 0)[0], CHANNEL_NAMES,
                                  args.data_seed)


def plan(work_dir: Path, args: argparse.Namespace) -> None:
    """nnU-Net plans/preprocessing of the generated dataset (kept when present) + the 3d_quality
    configuration (not with ``--full-size-plans``)."""
    plans_file = work_dir / "preprocessed" / DATASET / f"{PLANS}.json"
    if not plans_file.is_file():
        print("nnUNetv2_plan_and_preprocess ...", flush=True)
        env = nnunet_env(work_dir)
        env.pop("nnUNet_n_proc_DA", None)  # 0 breaks nnU-Net's planner
        run_quiet(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", BASE_CONFIGURATION, "-np", "1",
                   "-npfp", "1"], env, work_dir / "logs" / "plan_and_preprocess.log")
    if not args.full_size_plans:
        add_quality_configuration(plans_file, args.features, args.batch_size)


def add_quality_configuration(plans_file: Path, features: int, batch_size: int) -> dict:
    """Adds ``3d_quality`` to the plans: 3d_fullres (patch = whole volume) with first-stage width
    ``features`` (doubled per stage, at most 320) and ``batch_size``. Returns the configuration."""
    plans = json.loads(plans_file.read_text())
    base = plans["configurations"][BASE_CONFIGURATION]
    architecture = json.loads(json.dumps(base["architecture"]))
    stages = architecture["arch_kwargs"]["n_stages"]
    architecture["arch_kwargs"]["features_per_stage"] = [min(features * 2 ** i, 320) for i in range(stages)]
    configuration = {"inherits_from": BASE_CONFIGURATION, "architecture": architecture, "batch_size": batch_size}
    if plans["configurations"].get(CONFIGURATION) != configuration:
        plans["configurations"][CONFIGURATION] = configuration
        write_text_atomic(plans_file, json.dumps(plans, indent=4))
    return {**base, **configuration}


def model_folder(work_dir: Path, trainer: str, seed: int) -> Path:
    return (work_dir / "results" / f"seed_{seed}" / DATASET
            / f"{trainer}__{PLANS}__{work_dir_configuration(work_dir)}" / f"fold_{FOLD}")


TRAIN_CODE = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
dataset, configuration, fold, trainer, plans, device, epochs, iterations, val_iterations, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
t = get_trainer_from_args(dataset, configuration, int(fold), trainer, plans, device=torch.device(device))
t.num_epochs, t.num_iterations_per_epoch = int(epochs), int(iterations)
t.num_val_iterations_per_epoch, t.save_every = int(val_iterations), 5
maybe_load_checkpoint(t, True, False, None)
t.run_training()
"""


def train(work_dir: Path, trainer: str, seed: int, args: argparse.Namespace) -> float:
    """Trains (trainer, seed) through nnU-Net's trainer API (continuing a checkpoint if any); the
    schedule is set on the trainer and also passed as nnUNet_dmaf_* variables. Returns seconds.
    nnU-Net's final validation of fold 0 is skipped: the test set is evaluated instead."""
    start = time.perf_counter()
    run_quiet([sys.executable, "-c", TRAIN_CODE, str(DATASET_ID), work_dir_configuration(work_dir), FOLD, trainer, PLANS, args.device,
               str(args.epochs), str(args.iterations), str(args.val_iterations), str(args.threads)],
              nnunet_env(work_dir, seed, args, args.threads), work_dir / "logs" / f"train_{trainer}_seed{seed}.log")
    return time.perf_counter() - start


def evaluation_summary(work_dir: Path, trainer: str, seed: int) -> Path:
    """summary.json of the subset evaluation of (trainer, seed) in the work dir."""
    return work_dir / "evaluation" / f"seed_{seed}" / trainer / "summary.json"


def evaluate(work_dir: Path, trainer: str, seed: int, device: str, threads: int) -> Path:
    out = evaluation_summary(work_dir, trainer, seed).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = work_dir / "raw" / DATASET
    # the same interpreter as the trainings (not whichever nnUNetv2_dmaf_evaluate_subsets is first on PATH)
    run_quiet([sys.executable, "-m", "nnunetv2_dmaf.evaluation.subset_evaluation", "-i", str(raw / "imagesTs"),
               "-l", str(raw / "labelsTs"), "-o", str(out), "-d", str(DATASET_ID), "-c", work_dir_configuration(work_dir), "-p", PLANS, "-f", FOLD, "-tr", trainer,
               "-chk", "checkpoint_final.pth", "--disable_tta", "-device", device, "--overwrite",
               "--disable_progress_bar"], nnunet_env(work_dir, seed, threads=threads), work_dir / "logs" / f"eval_{trainer}_seed{seed}.log")
    return out / "summary.json"


# ------------------------------------------------------------------------------ run records
def data_name(settings: dict) -> str:
    """The generated data of ``settings``, by their values: ``train<n>-test<n>-<spacing>mm-data<seed>``."""
    s = settings
    return f"train{s['num_training']}-test{s['num_test']}-{s['spacing']:g}mm-data{s['data_seed']}"


def records_folder(records: Path, settings: dict) -> Path:
    """``records``/<one folder per data/schedule setting, named by its values>."""
    s = settings
    plans = "fullsize" if s.get("full_size_plans") else f"width{s['features']}-batch{s['batch_size']}"
    return records / f"{data_name(s)}-{plans}-{s['epochs']}x{s['iterations']}-val{s['val_iterations']}"


def code_version() -> str:
    """Short commit of this checkout, with '+uncommitted' if CODE_PATHS have uncommitted changes;
    'unknown' outside a git checkout."""
    try:
        def git(*arguments: str) -> str:
            return subprocess.run(["git", "-C", str(REPO), *arguments], capture_output=True, text=True,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+uncommitted" if changed else "")


def provenance_path(work_dir: Path, trainer: str, seed: int) -> Path:
    """The commits that trained and evaluated (trainer, seed) in the work dir (JSON)."""
    return work_dir / "provenance" / f"{trainer}_seed{seed}.json"


def note_code_version(work_dir: Path, trainer: str, seed: int, step: str) -> None:
    """Adds this checkout's ``code_version`` to ``provenance/<trainer>_seed<seed>.json`` under
    ``step`` ('trained': at every start or continuation of the training; 'evaluated')."""
    path = provenance_path(work_dir, trainer, seed)
    provenance = json.loads(path.read_text()) if path.is_file() else {}
    versions, version = provenance.setdefault(step, []), code_version()
    if version not in versions:
        versions.append(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(provenance, indent=2))


#: ``data_difference`` tolerances. The same seeded data may differ between machines in the last bits of
#: the generator's floating point, which can flip a voxel at a threshold; a real change is larger.
DATA_RTOL = 1e-3  # intensity mean/std (relative) and label voxel counts (relative, at least DATA_VOXELS)
DATA_VOXELS = 2
DATA_CENTROID = 0.1  # centroids, in voxels (more for small labels: DATA_VOXELS flipped voxels' worth)


def data_path(records: Path, work_dir: Path) -> Path:
    """The data fingerprint of the work dir's data settings, shared by every schedule and plans setting
    of the same data: ``<records root>/data-<data_name>.json``."""
    return records.parent / f"data-{data_name(json.loads((work_dir / 'settings.json').read_text()))}.json"


def case_file_entry(path: Path, labels: bool) -> dict:
    """One case file of a ``data_fingerprint``: shape, geometry (spacing, origin, direction) and per label
    value its voxel count and centroid (labels) or the intensity mean, std and centroid (images);
    centroids in voxels, (z, y, x)."""
    import SimpleITK as sitk
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    grid = np.indices(array.shape).reshape(array.ndim, -1).astype(np.float64)
    entry: dict = {"shape": list(array.shape),
                   "geometry": [round(v, 4) for v in (*image.GetSpacing(), *image.GetOrigin(), *image.GetDirection())]}
    if labels:
        values, counts = np.unique(array, return_counts=True)
        entry["counts"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
        entry["centroids"] = {str(int(v)): [round(float(x), 3) for x in grid[:, array.ravel() == v].mean(1)]
                              for v in values}
    else:
        weights = np.abs(array.ravel().astype(np.float64))
        entry["mean"], entry["std"] = float(f"{array.mean():.6g}"), float(f"{array.std():.6g}")
        entry["centroid"] = [round(float(x), 3) for x in grid @ weights / weights.sum()] if weights.any() else None
    return entry


@lru_cache(maxsize=4)
def data_fingerprint(raw: Path) -> dict:
    """What identifies a generated raw dataset folder: its dataset.json, the availability table's rows
    and every case file (``imagesTr/<name>`` ... ``labelsTs/<name>``: ``case_file_entry``). About 2 s
    for 130 cases at 6 mm; computed once per process and folder (the data do not change during a run)."""
    table = availability_table_path(raw)
    fingerprint: dict = {"dataset": json.loads((raw / "dataset.json").read_text()),
                         "availability": table.read_text().splitlines() if table.is_file() else None, "files": {}}
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for path in sorted((raw / folder).glob("*.nii.gz")):
            fingerprint["files"][f"{folder}/{path.name}"] = case_file_entry(path, folder.startswith("labels"))
    return fingerprint


def incomplete_data(fingerprint: dict) -> str | None:
    """Why a ``data_fingerprint``'s dataset is incomplete (a case without all its channels, fewer
    training cases than dataset.json says), in words; None when complete."""
    dataset, names = fingerprint["dataset"], fingerprint["files"]
    ending, channels = dataset.get("file_ending", ".nii.gz"), len(dataset.get("channel_names", {}))
    for split in ("Tr", "Ts"):
        cases = [n[len(f"labels{split}/"):-len(ending)] for n in names if n.startswith(f"labels{split}/")]
        expected = {f"images{split}/{channel_file_name(case, c, ending)}" for case in cases for c in range(channels)}
        images = {n for n in names if n.startswith(f"images{split}/")}
        if images != expected:
            odd = sorted(images ^ expected)[0]
            return f"images{split} does not hold the {channels} channels of exactly the cases of labels{split}: " \
                   f"{odd} is {'missing' if odd in expected else 'extra'}"
    training = sum(n.startswith("labelsTr/") for n in names)
    if training != dataset.get("numTraining"):
        return f"{training} training cases, dataset.json says {dataset.get('numTraining')}"
    return None


def case_file_difference(name: str, old: dict, new: dict) -> str | None:
    """The first difference between two ``case_file_entry``s of ``name`` beyond the DATA_* tolerances."""
    def moved(a: Sequence[float] | None, b: Sequence[float] | None, tolerance: float) -> bool:
        return (a is None) != (b is None) or (a is not None and max(abs(x - y) for x, y in zip(a, b)) > tolerance)
    for key in ("shape", "geometry"):
        if old[key] != new[key]:
            return f"{name}: {key} {old[key]} in the records, {new[key]} in the work dir"
    if "counts" in old:
        if old["counts"].keys() != new.get("counts", {}).keys():
            return f"{name}: label values {sorted(old['counts'])} in the records, {sorted(new.get('counts', {}))} in the work dir"
        for value, count in old["counts"].items():
            allowed = max(DATA_VOXELS, DATA_RTOL * count)
            if abs(count - new["counts"][value]) > allowed:
                return f"{name}: {count} voxels of label {value} in the records, {new['counts'][value]} in the work dir"
            if moved(old["centroids"][value], new["centroids"][value], max(DATA_CENTROID, allowed * max(old["shape"]) / count)):
                return f"{name}: label {value} centred at {old['centroids'][value]} in the records, " \
                       f"{new['centroids'][value]} in the work dir (voxels)"
        return None
    for key in ("mean", "std"):
        if not np.isclose(old[key], new[key], rtol=DATA_RTOL, atol=DATA_RTOL):
            return f"{name}: intensity {key} {old[key]} in the records, {new[key]} in the work dir"
    if moved(old["centroid"], new["centroid"], DATA_CENTROID):
        return f"{name}: intensities centred at {old['centroid']} in the records, {new['centroid']} in the work dir (voxels)"
    return None


def data_difference(recorded: dict, current: dict) -> str | None:
    """The first difference between two ``data_fingerprint``s in words; None when they are the same
    data: dataset.json, table rows, file names, shapes, geometry and label values exact; voxel counts,
    intensity moments and centroids within the DATA_* tolerances."""
    if recorded["dataset"] != current["dataset"]:
        keys = sorted(k for k in recorded["dataset"].keys() | current["dataset"].keys()
                      if recorded["dataset"].get(k) != current["dataset"].get(k))
        return f"dataset.json differs in {', '.join(keys)}"
    old_rows, new_rows = recorded["availability"], current["availability"]
    if old_rows != new_rows:
        if old_rows is None or new_rows is None:
            return f"the availability table is missing in the {'records' if old_rows is None else 'work dir'}"
        row = next((i for i, (a, b) in enumerate(zip(old_rows, new_rows)) if a != b), min(len(old_rows), len(new_rows)))
        def line(rows: list[str]) -> str:
            return rows[row] if row < len(rows) else "no row"
        return f"availability table line {row + 1}: {line(old_rows)!r} in the records, {line(new_rows)!r} in the work dir"
    names = recorded["files"].keys() ^ current["files"].keys()
    if names:
        return f"{len(names)} case file(s) on one side only, e.g. {sorted(names)[0]}"
    return next(filter(None, (case_file_difference(name, old, current["files"][name])
                              for name, old in recorded["files"].items())), None)


def check_data(records: Path, work_dir: Path) -> None:
    """The run records of one data setting must all come from the same data (runs add up over
    sessions whose work dirs are regenerated): the first complete work dir of the setting stores its
    ``data_fingerprint`` at ``data_path`` (created exclusively: of two runs at once, the second is
    compared); a work dir whose data differ (e.g. another generator or nilearn version), that is
    incomplete, or whose raw data are gone while a fingerprint exists, is a DataError naming the
    first difference, before anything is planned, trained or recorded."""
    raw = work_dir / "raw" / DATASET
    path = data_path(records, work_dir) if (work_dir / "settings.json").is_file() else None
    if not (raw / "dataset.json").is_file():
        if path is not None and path.is_file():
            raise DataError(f"{raw}: no generated data left to check against {path}; "
                            f"regenerate them (run without --report-only) before recording")
        return  # a work dir of records only: nothing was generated here
    current = data_fingerprint(raw)
    problem = incomplete_data(current)
    if problem is not None:
        raise DataError(f"{raw} is incomplete ({problem}); delete it and run again to regenerate it")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        staged.write_text(json.dumps(current, separators=(",", ":")) + "\n")
        try:
            os.link(staged, path)  # exclusive: a fingerprint another run stored first is compared below
            return
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    difference = data_difference(json.loads(path.read_text()), current)
    if difference is not None:
        raise DataError(f"{raw} is not the data the run records of {path.name} were made on ({difference}); "
                        f"use another --records folder, or regenerate the work dir with the generator and "
                        f"nilearn of the records' commits")


def record_path(records: Path, trainer: str, seed: int) -> Path:
    return records / f"{trainer}_seed{seed}.json"


def write_record(work_dir: Path, records: Path, trainer: str, seed: int) -> Path:
    """The run record of a finished and evaluated (trainer, seed) of the work dir: trainer, seed,
    settings, code (commits it was trained/evaluated with), the evaluation's summary.json, the
    training curves and the test cases without each region (see ``empty_references``; left out
    when the references are not available). Runs from before records existed get the code 'unknown'.
    DataError (nothing written) when the work dir's data are not those of ``records`` (``check_data``)."""
    check_data(records, work_dir)
    provenance = provenance_path(work_dir, trainer, seed)
    record = {"trainer": trainer, "seed": seed, "settings": json.loads((work_dir / "settings.json").read_text()),
              "code": json.loads(provenance.read_text()) if provenance.is_file() else
              {"trained": ["unknown"], "evaluated": ["unknown"]},
              "summary": json.loads(evaluation_summary(work_dir, trainer, seed).read_text()),
              "curves": json.loads(ensure_curves(work_dir, trainer, seed).read_text())}
    empty = empty_references(work_dir, record)
    if empty is not None:
        record["empty_references"] = empty
    path = record_path(records, trainer, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, separators=(",", ":")) + "\n")
    return path


def empty_references(work_dir: Path, record: dict) -> dict[str, list[str]] | None:
    """Region -> the test cases whose reference lacks the region (``cases_without_region``), for
    the record's evaluation; None when the references are not available."""
    metadata, settings = record["summary"]["metadata"], record["settings"]
    skipped = cases_without_region(work_dir, metadata.get("regions"), metadata.get("cases", []),
                                   settings["spacing"], settings["data_seed"])
    return None if skipped is None else {region: sorted(cases) for region, cases in skipped.items()}


def training_curves(checkpoint: Path) -> dict:
    """Per-epoch logs of a finished training (nnU-Net's logger, from the final checkpoint)."""
    import torch
    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    curves = {k: [np.asarray(v).tolist() for v in logging[k]] for k in
              ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses")}
    curves["epoch_seconds"] = [end - start for start, end in
                               zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    return curves


def ensure_curves(work_dir: Path, trainer: str, seed: int) -> Path:
    """``curves/<trainer>_seed<seed>.json`` from the final checkpoint (written once)."""
    curves = work_dir / "curves" / f"{trainer}_seed{seed}.json"
    if not curves.is_file() or "epoch_seconds" not in json.loads(curves.read_text()):
        curves.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(curves, json.dumps(training_curves(model_folder(work_dir, trainer, seed) /
                                                             "checkpoint_final.pth")))
    return curves


def run_one(work_dir: Path, records: Path, trainer: str, seed: int, args: argparse.Namespace) -> None:
    """Trains, stores the curves, evaluates and records one (trainer, seed) unless already recorded."""
    if record_path(records, trainer, seed).is_file():
        return
    folder = model_folder(work_dir, trainer, seed)
    if not (folder / "checkpoint_final.pth").is_file():
        print(f"[{time.strftime('%H:%M:%S')}] training {trainer}, seed {seed} ...", flush=True)
        note_code_version(work_dir, trainer, seed, "trained")
        seconds = train(work_dir, trainer, seed, args)
        print(f"[{time.strftime('%H:%M:%S')}] {trainer}, seed {seed}: trained in {seconds / 60:.1f} min", flush=True)
    ensure_curves(work_dir, trainer, seed)
    if not evaluation_summary(work_dir, trainer, seed).is_file():
        print(f"[{time.strftime('%H:%M:%S')}] evaluating {trainer}, seed {seed} on 15 subsets ...", flush=True)
        note_code_version(work_dir, trainer, seed, "evaluated")
        evaluate(work_dir, trainer, seed, args.device, args.threads)
    print(f"[{time.strftime('%H:%M:%S')}] recorded {write_record(work_dir, records, trainer, seed)}", flush=True)


def run_all(work_dir: Path, records: Path, runs: Sequence[tuple[str, int]], args: argparse.Namespace) -> None:
    """Runs (trainer, seed) pairs in this order, ``args.jobs`` at a time. A failed run is reported
    and the others go on (DataError at the end); Ctrl-C/SIGTERM stops every running child."""
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, work_dir, records, trainer, seed, args): (trainer, seed)
                   for trainer, seed in runs}
        try:
            for future in as_completed(futures):
                if future.exception() is not None:
                    print(f"{futures[future][0]}, seed {futures[future][1]}: {future.exception()}", file=sys.stderr)
                    failed.append(futures[future])
        except BaseException:
            for future in futures:
                future.cancel()
            stop_running()
            raise
    if failed:
        raise DataError(f"{len(failed)} run(s) failed: " + ", ".join(f"{t} seed {s}" for t, s in failed))


# ------------------------------------------------------------------------------ report
def collect(work_dir: Path, records: Path, trainers: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict]]:
    """trainer -> seed -> run record, for every recorded (trainer, seed); a finished evaluation of
    the work dir that has no record yet is recorded first."""
    results: dict[str, dict[int, dict]] = {}
    for trainer in trainers:
        for seed in seeds:
            path = record_path(records, trainer, seed)
            if not path.is_file() and evaluation_summary(work_dir, trainer, seed).is_file():
                write_record(work_dir, records, trainer, seed)
            if path.is_file():
                results.setdefault(trainer, {})[seed] = json.loads(path.read_text())
    return results


def region_mean(row: dict, regions: Sequence[str]) -> float:
    """Dice averaged over the regions of one evaluation row (a subset, the mean over subsets or a case)."""
    return float(np.mean([row[f"Dice {r}"] for r in regions]))


def subset_dice(summary: dict) -> dict[str, dict[str, float]]:
    """subset name -> region -> Dice (mean over test cases), plus 'mean' = mean over regions;
    the key 'mean over subsets' holds the same for the mean over the 15 subsets."""
    regions = list(summary["metadata"]["regions"])
    rows = {row["subset"]: row for row in summary["subsets"]}
    rows["mean over subsets"] = summary["mean_over_subsets"]
    return {name: {**{r: row[f"Dice {r}"] for r in regions}, "mean": region_mean(row, regions)} for name, row in rows.items()}


def subset_dice_without(summary: dict, skipped: dict[str, set[str]]) -> dict[str, dict[str, float]]:
    """As ``subset_dice``, computed from the per-case rows with each region averaged only over the test
    cases not in ``skipped[region]`` (e.g. ET without the cases whose reference has no ET); NaN where
    a region has no case left."""
    regions = list(summary["metadata"]["regions"])
    subsets = [row["subset"] for row in summary["subsets"]]
    rows = summary["per_case"]
    table: dict[str, dict[str, float]] = {}
    for subset in subsets:
        scores = {r: float(np.mean([row[f"Dice {r}"] for row in rows if row["subset"] == subset
                                    and row["case"] not in skipped.get(r, set())])) for r in regions}
        table[subset] = {**scores, "mean": float(np.mean(list(scores.values())))}
    table["mean over subsets"] = {key: float(np.mean([table[s][key] for s in subsets])) for key in [*regions, "mean"]}
    return table


def seed_stats(per_seed: dict[int, dict], subset: str, key: str,
               dice: Callable[[dict], dict[str, dict[str, float]]] = subset_dice) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1; NaN for a single seed) over seeds of ``dice(summary)``
    (default ``subset_dice``: the evaluation's own means)."""
    values = [dice(r["summary"])[subset][key] for r in per_seed.values()]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def score_header(regions: Sequence[str]) -> str:
    """Header cells of ``score_cells``, joined with ' | '."""
    return " | ".join([f"{r} (mean over 15)" for r in regions] + ["**mean over 15 subsets**"]
                      + [f"{s} alone" for s in RARE_SUBSETS])


def score_cells(per_seed: dict[int, dict], regions: Sequence[str],
                dice: Callable[[dict], dict[str, dict[str, float]]] = subset_dice) -> list[str]:
    """The overview tables' score cells of one trainer: each region and the mean of regions over the 15
    subsets (bold), then the rarest modalities alone (RARE_SUBSETS); mean ± std over seeds."""
    return ([fmt(seed_stats(per_seed, "mean over subsets", r, dice)) for r in regions]
            + [f"**{fmt(seed_stats(per_seed, 'mean over subsets', 'mean', dice))}**"]
            + [fmt(seed_stats(per_seed, s, "mean", dice)) for s in RARE_SUBSETS])


def fmt(mean_std: tuple[float, float]) -> str:
    return f"{mean_std[0]:.3f}" if np.isnan(mean_std[1]) else f"{mean_std[0]:.3f} ± {mean_std[1]:.3f}"


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> str:
    """Markdown tables: overview per trainer, per-subset Dice, target check, code per run."""
    trainers = [t for t in TRAINERS if t in results] + [t for t in results if t not in TRAINERS]
    if not trainers:
        return "No finished evaluation yet.\n"
    first = next(iter(results[trainers[0]].values()))["summary"]
    regions = list(first["metadata"]["regions"])
    subsets = [row["subset"] for row in first["subsets"]]
    lines = [f"Settings: {args.num_training} training cases (fold 0: nnU-Net's 80/20 split), {args.num_test} "
             f"complete test cases, {args.spacing:g} mm, data seed {args.data_seed}; configuration "
             + (f"{BASE_CONFIGURATION} (nnU-Net's own plans, unchanged)" if args.full_size_plans else
                f"{CONFIGURATION} (first-stage width {args.features}, batch size {args.batch_size})")
             + f"; {args.epochs} epochs x "
             f"{args.iterations} iterations ({args.epochs * args.iterations} iterations); no TTA. "
             f"Values: Dice, mean ± std over the seeds listed.", "",
             "| trainer | seeds | training min / run | " + score_header(regions) + " | val. pseudo-Dice, last 10 % of epochs "
             "(change vs the 10 % before) |",
             "|---|---|---|" + "---|" * (len(regions) + 4)]
    for t in trainers:
        per_seed = results[t]
        minutes = [sum(r["curves"]["epoch_seconds"]) / 60 for r in per_seed.values()]
        cells = [TRAINERS.get(t, t), ",".join(map(str, sorted(per_seed))), f"{np.mean(minutes):.1f}" if minutes else "-"]
        cells += score_cells(per_seed, regions)
        cells += [", ".join(f"{end:.2f} ({change:+.3f})" for end, change in
                            (plateau(per_seed[seed]["curves"]["mean_fg_dice"]) for seed in sorted(per_seed)))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per subset (Dice averaged over WT/TC/ET and the test cases; mean ± std over seeds):", "",
              "| subset | " + " | ".join(TRAINERS.get(t, t) for t in trainers) + " |",
              "|---|" + "---|" * len(trainers)]
    for subset in subsets:
        lines.append(f"| {subset} | " + " | ".join(fmt(seed_stats(results[t], subset, "mean")) for t in trainers) + " |")
    skipped = recorded_empty_references(results)
    if skipped is None:  # records from before they stored them: the work dir's or regenerated references
        skipped = cases_without_region(args.work_dir, first["metadata"]["regions"], first["metadata"].get("cases", []),
                                       args.spacing, args.data_seed)
    lines += ["", *target_check(results, subsets), "", *without_empty_references(results, trainers, skipped),
              code_versions(results, trainers)]
    return "\n".join(lines) + "\n"


def cases_without_region(work_dir: Path, regions: dict[str, list[int]], cases: Sequence[str], spacing: float,
                         data_seed: int) -> dict[str, set[str]] | None:
    """Region name -> the test ``cases`` whose reference label map has none of the region's labels.
    The references are the work dir's labelsTs, or regenerated from the seeded generator
    (``make_case(spacing, data_seed, index)``, the same data) when the work dir is gone. None when
    they are not available: records without test case ids or region labels, or no labelsTs and no
    MNI template to regenerate them from."""
    if not cases or not isinstance(regions, dict):
        return None
    import SimpleITK as sitk
    from nnunetv2_dmaf.anatomical_phantom import TemplateNotFoundError, make_case
    present: dict[str, np.ndarray] = {}
    for case in cases:
        path = work_dir / "raw" / DATASET / "labelsTs" / f"{case}.nii.gz"
        try:
            labels = (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) if path.is_file()
                      else make_case(spacing, data_seed, int(case.rsplit("_", 1)[1]))[1])
        except TemplateNotFoundError:
            return None
        present[case] = np.unique(labels)
    return {name: {case for case, values in present.items() if not np.isin(values, ids).any()}
            for name, ids in regions.items()}


def recorded_empty_references(results: dict[str, dict[int, dict]]) -> dict[str, set[str]] | None:
    """The records' ``empty_references`` (region -> test cases); None unless every record has them.
    DataError when two records disagree (they hold the same test cases for the same settings)."""
    stored = {(t, seed): r.get("empty_references") for t, per_seed in results.items() for seed, r in per_seed.items()}
    if not stored or any(value is None for value in stored.values()):
        return None
    first_run, first = next(iter(stored.items()))
    for run, value in stored.items():
        if value != first:
            raise DataError(f"run records {first_run[0]} seed {first_run[1]} and {run[0]} seed {run[1]} disagree "
                            f"on the test cases without a region ({first} vs {value})")
    return {region: set(cases) for region, cases in first.items()}


def without_empty_references(results: dict[str, dict[int, dict]], trainers: Sequence[str],
                             skipped: dict[str, set[str]] | None) -> list[str]:
    """Overview lines with each region scored only on the test cases whose reference contains it: a case
    without ET scores ET Dice 1 or 0 per subset (empty reference convention), so one run that learns to
    predict no ET there moves its row by several hundredths. Empty when every reference has every region."""
    if skipped is None:
        return ["(Test references not available (no labelsTs in the work dir, no MNI template to regenerate "
                "them, or records without test case ids): the table without empty references is left out.)", ""]
    skipped = {region: cases for region, cases in skipped.items() if cases}
    if not skipped:
        return []
    dice = partial(subset_dice_without, skipped=skipped)
    without_rows = [t for t in trainers if not all(r["summary"].get("per_case") for r in results[t].values())]
    trainers = [t for t in trainers if t not in without_rows]
    if not trainers:
        return ["(No run record has per-case rows: the table without empty references is left out.)", ""]
    regions = list(next(iter(results[trainers[0]].values()))["summary"]["metadata"]["regions"])
    left_out = "; ".join(f"{r}: {', '.join(sorted(c))}" for r, c in skipped.items())
    lines = [f"Without empty references (test cases left out of a region whose reference lacks it: {left_out}; "
             "the other regions over all test cases):", "",
             "| trainer | seeds | " + score_header(regions) + " |",
             "|---|---|" + "---|" * (len(regions) + 3)]
    for t in trainers:
        cells = [TRAINERS.get(t, t), ",".join(map(str, sorted(results[t]))), *score_cells(results[t], regions, dice)]
        lines.append("| " + " | ".join(cells) + " |")
    if without_rows:
        lines += ["", "Left out (records without per-case rows): " + ", ".join(TRAINERS.get(t, t) for t in without_rows)]
    return lines + [""]


def plateau(pseudo_dice: Sequence[float], fraction: float = 0.1) -> tuple[float, float]:
    """Convergence of a validation curve ([epochs]): the mean over the last ``fraction`` of the epochs
    (at least one) and its change against the mean over the ``fraction`` before. A change near 0 is
    a plateau; nnU-Net's poly learning rate is near 0 in the last 10 % of any schedule, so a curve that
    still rises there would rise further with a longer schedule."""
    values = np.asarray(pseudo_dice, dtype=float)
    window = max(1, int(round(len(values) * fraction)))
    last, before = values[-window:], values[-2 * window:-window]
    return float(last.mean()), float(last.mean() - before.mean()) if len(before) else float("nan")


def code_versions(results: dict[str, dict[int, dict]], trainers: Sequence[str]) -> str:
    """One line: which commits trained and evaluated which runs (from the run records)."""
    runs: dict[str, dict[str, list[str]]] = {}  # commits -> trainer -> seeds
    for t in trainers:
        for seed, record in sorted(results[t].items()):
            code = record["code"]
            key = f"trained with {', '.join(code.get('trained', ['unknown']))}, evaluated with " \
                  f"{', '.join(code.get('evaluated', ['unknown']))}"
            runs.setdefault(key, {}).setdefault(TRAINERS.get(t, t), []).append(str(seed))
    return "Code (commits, from the run records): " + "; ".join(
        f"{key}: " + ", ".join(f"{t} seed{'s' if len(s) > 1 else ''} {','.join(s)}" for t, s in by_trainer.items())
        for key, by_trainer in runs.items())


def target_check(results: dict[str, dict[int, dict]], subsets: Sequence[str]) -> list[str]:
    """The issue's target, for (c) and each DMAF-Net variant that is not an ablation: above the best
    baseline on the mean over subsets by > 2 seed std, and not below it on T2 alone and FLAIR alone."""
    baselines = [b for b in BASELINES if b in results]
    candidates = [t for t in (DMAF, *VARIANTS) if t in results]
    if not candidates or not baselines:
        return ["Target check: needs (c) and at least one baseline."]
    best = max(baselines, key=lambda b: seed_stats(results[b], "mean over subsets", "mean")[0])
    base = seed_stats(results[best], "mean over subsets", "mean")
    lines = []
    for trainer in candidates:
        dmaf = seed_stats(results[trainer], "mean over subsets", "mean")
        margin = 2 * np.nanmax([dmaf[1], base[1], 0.0])
        n = min(len(results[trainer]), len(results[best]))
        mean_met = dmaf[0] - base[0] > margin and n > 1
        lines.append(f"Target check for {TRAINERS.get(trainer, trainer)} ({n} seed(s); best baseline "
                     f"{TRAINERS.get(best, best)}): mean over 15 subsets {dmaf[0]:.3f} vs {base[0]:.3f}, difference "
                     f"{dmaf[0] - base[0]:+.3f}, 2 x seed std {margin:.3f}: "
                     + ("met" if mean_met else "not met" + (" (a single seed gives no std)" if n < 2 else "")))
        below = []
        for subset in RARE_SUBSETS:
            if subset in subsets:
                d, b = seed_stats(results[trainer], subset, "mean")[0], seed_stats(results[best], subset, "mean")[0]
                lines.append(f"- {subset} alone: {d:.3f} vs {b:.3f} ({'not below' if d >= b else 'below'} the baseline)")
                below += [f"{subset} alone"] if d < b else []
        lines += paired_cases(results[trainer], results[best])
        lines.append("- whole target: " + ("**met**" if mean_met and not below else "**not met**"
                     + (f" ({', '.join(below)} below the baseline)" if below else "")))
    return lines


def case_dice(per_seed: dict[int, dict]) -> dict[str, float]:
    """Test case -> Dice averaged over regions, subsets and seeds (the evaluations' per-case rows)."""
    values: dict[str, list[float]] = {}
    for record in per_seed.values():
        regions = list(record["summary"]["metadata"]["regions"])
        for row in record["summary"].get("per_case", []):
            values.setdefault(row["case"], []).append(region_mean(row, regions))
    return {case: float(np.mean(v)) for case, v in values.items()}


def paired_cases(candidate: dict[int, dict], baseline: dict[int, dict]) -> list[str]:
    """One line comparing two trainers case by case on the same test cases (Wilcoxon signed-rank):
    the test-set uncertainty that the seed std does not show. Empty with fewer than 2 shared cases."""
    from scipy.stats import wilcoxon
    ours, theirs = case_dice(candidate), case_dice(baseline)
    cases = sorted(set(ours) & set(theirs))
    if len(cases) < 2:
        return []
    diff = np.array([ours[c] - theirs[c] for c in cases])
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return [f"- per test case (Dice over regions, subsets and seeds): above the baseline on {int(np.sum(diff > 0))} "
            f"of {len(cases)} cases, mean difference {diff.mean():+.3f}, Wilcoxon signed-rank p = {p:.2g}"]


def plot(results: dict[str, dict[int, dict]], figures: Path, num_validation: int, variant: str = "") -> list[Path]:
    """Per-subset Dice (mean ± std over seeds) and validation pseudo-Dice curves (validation on
    ``num_validation`` cases) as ``quality_subsets[_<variant>].png`` and ``quality_curves[_<variant>].png``;
    returns the files."""
    suffix = f"_{variant}" if variant else ""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    trainers = [t for t in TRAINERS if t in results] + [t for t in results if t not in TRAINERS]
    if not trainers:
        return []
    figures.mkdir(parents=True, exist_ok=True)
    first = next(iter(results[trainers[0]].values()))["summary"]
    subsets = [row["subset"] for row in first["subsets"]] + ["mean over subsets"]
    fig, ax = plt.subplots(figsize=(13, 4.8))
    width = 0.8 / len(trainers)
    for i, t in enumerate(trainers):
        stats = np.array([seed_stats(results[t], s, "mean") for s in subsets])
        ax.bar(np.arange(len(subsets)) + (i - (len(trainers) - 1) / 2) * width, stats[:, 0], width, yerr=np.nan_to_num(stats[:, 1]),
               label=f"{TRAINERS.get(t, t)} (seeds {','.join(map(str, sorted(results[t])))})", capsize=2)
    ax.set_xticks(np.arange(len(subsets)), [s.replace("+", "+\n") for s in subsets], fontsize=7)
    ax.set_ylabel("Dice (mean of WT, TC, ET)")
    ax.set_title("Quality benchmark: Dice per available-modality subset (test cases, mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    ax.set_ylim(0, 1.15)
    fig.tight_layout()
    subsets_png = figures / f"quality_subsets{suffix}.png"
    fig.savefig(subsets_png, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, t in enumerate(trainers):
        for seed in sorted(results[t]):
            curves = results[t][seed]["curves"]
            label = TRAINERS.get(t, t) if seed == min(results[t]) else None
            for ax, values in zip(axes, (curves["train_losses"], curves["mean_fg_dice"],
                                         [d[-1] for d in curves["dice_per_class_or_region"]])):
                ax.plot(values, color=f"C{i}", alpha=0.25, lw=0.8)
                ax.plot(moving_average(values, 5), color=f"C{i}", lw=1.5, label=label)
    for ax, title in zip(axes, ("training loss (Dice + CE, deep supervision)", "validation pseudo-Dice (mean of regions)",
                                "validation pseudo-Dice of ET")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[1].set_ylim(0, 1)
    axes[2].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.suptitle("one line per seed (thin: per epoch, thick: 5-epoch moving average); validation on fold 0's "
                 f"{num_validation} validation cases with their table modalities only", fontsize=9)
    fig.tight_layout()
    curves_png = figures / f"quality_curves{suffix}.png"
    fig.savefig(curves_png, dpi=110)
    plt.close(fig)
    return [subsets_png, curves_png]


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` epochs (shorter at the start): [len(values)]."""
    cumulative = np.cumsum(np.concatenate([[0.0], np.asarray(values, dtype=float)]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def docs_variant(settings: dict) -> str:
    """'' for the default data/schedule settings, else the records folder name of ``settings``: the
    suffix that keeps each setting's docs block and figures apart."""
    return "" if settings == settings_of(build_parser().parse_args([])) else records_folder(Path(), settings).name


def docs_markers(variant: str) -> tuple[str, str]:
    """First and last line of the docs block of a settings variant ('' = the default settings)."""
    name = f" {variant}" if variant else ""
    return (f"<!-- quality tables{name}: written by benchmarks/quality.py, do not edit by hand -->",
            f"<!-- end of quality tables{name} -->")


DOCS_BEGIN, DOCS_END = docs_markers("")


#: a settings variant without a block in docs/benchmarks.md gets a new section before this heading
DOCS_NEW_BLOCK_BEFORE = "### What the numbers show, honestly"


def write_docs(docs: Path, tables: str, variant: str = "") -> None:
    """Replaces the marked block of ``variant`` (``docs_markers``) in docs/benchmarks.md with ``tables``.
    A variant's first run adds its block as a new section before ``DOCS_NEW_BLOCK_BEFORE``; the block
    of the default settings must exist."""
    path = docs / "benchmarks.md"
    text = path.read_text(encoding="utf-8")
    begin, end = docs_markers(variant)
    if variant and begin not in text and end not in text and DOCS_NEW_BLOCK_BEFORE in text:
        head, tail = text.split(DOCS_NEW_BLOCK_BEFORE, 1)
        text = f"{head}### Results: {variant}\n\n{begin}\n{end}\n\n{DOCS_NEW_BLOCK_BEFORE}{tail}"
    replace_block(path, text, begin, end, tables, "quality block")


def replace_block(path: Path, text: str, begin: str, end: str, block: str, what: str) -> None:
    """Writes ``text`` into ``path`` with the lines between ``begin`` and ``end`` replaced by ``block``;
    UsageError naming the file when the markers are missing."""
    if begin not in text or end not in text:
        raise UsageError(f"{path}: no {what} (lines '{begin}' ... '{end}') to write into")
    head, rest = text.split(begin, 1)
    write_text_atomic(path, head + begin + "\n" + block + rest[rest.index(end):])


#: README's comparison table (``readme_summary``): its rows, and per column group the title, this
#: script's flags of the settings whose run records it reads, and the subsets shown alone
README_TRAINERS = ("nnUNetTrainerZeroFilled", "nnUNetTrainerChannelDropout", "nnUNetTrainerDMAF",
                   "nnUNetTrainerDMAF_singleModalityFusion_025")
README_COLUMNS = (("CPU, reduced plans, 400 epochs", ("--epochs", "400"), RARE_SUBSETS),
                  ("GPU, nnU-Net's full-size plans, 80 epochs", ("--epochs", "80", "--full-size-plans"), ("T2",)))
README_BEGIN = "<!-- quality summary: written by benchmarks/quality.py from the run records, do not edit by hand -->"
README_END = "<!-- end of quality summary -->"


def recorded_runs(folder: Path, trainer: str) -> dict[int, dict]:
    """seed -> run record of ``trainer`` in one records folder (``record_path`` names)."""
    runs: dict[int, dict] = {}
    prefix = record_path(folder, trainer, 0).name[:-len("0.json")]
    for path in folder.glob(f"{prefix}*.json"):
        seed = path.stem[len(prefix):]
        if seed.isdigit():
            runs[int(seed)] = json.loads(path.read_text())
    return runs


def summary_scores(runs: dict[int, dict], alone: Sequence[str]) -> list[tuple[float, float]]:
    """One trainer's scores in a README column group: mean over 15 subsets, then each subset of ``alone``
    (mean and std over seeds)."""
    return [seed_stats(runs, subset, "mean") for subset in ("mean over subsets", *alone)]


def readme_summary(records: Path) -> str:
    """README's comparison table (README_TRAINERS x README_COLUMNS) from every run record of those
    settings: seeds, mean over 15 subsets (mean ± std over seeds) and the subsets alone (mean); the
    best printed value of each score column in bold, 'not run' where a trainer has no record.
    UsageError when ``records`` holds no record of any of them."""
    header, rows, found = ["trainer"], {t: [f"`{t}`"] for t in README_TRAINERS}, False
    for title, flags, alone in README_COLUMNS:
        folder = records_folder(records, settings_of(build_parser().parse_args(list(flags))))
        runs = {t: recorded_runs(folder, t) for t in README_TRAINERS}
        found = found or any(runs.values())
        header += [f"{title}: seeds", "mean over 15 subsets", *(f"{s} alone" for s in alone)]
        scores = {t: summary_scores(runs[t], alone) for t in README_TRAINERS if runs[t]}
        best = [max((round(v[i][0], 3) for v in scores.values() if not np.isnan(v[i][0])), default=None)
                for i in range(1 + len(alone))]
        for t in README_TRAINERS:
            if t not in scores:
                rows[t] += ["not run", *[""] * (1 + len(alone))]
                continue
            texts = [fmt(scores[t][0])] + [fmt((mean, float("nan"))) for mean, _ in scores[t][1:]]
            rows[t] += [str(len(runs[t]))] + [f"**{text}**" if round(value[0], 3) == b else text
                                              for text, value, b in zip(texts, scores[t], best)]
    if not found:
        raise UsageError(f"{records}: no run record of the README's trainers and settings (README_COLUMNS)")
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(rows[t]) + " |" for t in README_TRAINERS)]) + "\n"


def write_readme(readme: Path, table: str) -> None:
    """Replaces the block between README_BEGIN and README_END in ``readme`` with ``table``."""
    replace_block(readme, readme.read_text(encoding="utf-8"), README_BEGIN, README_END, table, "quality summary block")


# ------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmark_quality"),
                        help="data, models, evaluations (resumed if present; default %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS),
                        help="-tr names, run in this order for all seeds (default: (a), (b), (c), ablations)")
    parser.add_argument("--docs-dir", type=Path, default=REPO / "docs",
                        help="where benchmarks.md and figures/ are written (default %(default)s)")
    parser.add_argument("--records", type=Path, default=RECORDS,
                        help="run records, one folder per data/schedule setting (default %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="only tables and plots from recorded runs")
    parser.add_argument("--no-docs", action="store_true", help="print the tables, write nothing into docs or README")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README whose comparison table (marked block) is remade from the run records of "
                             "README_COLUMNS' settings whenever the docs are written (default: this checkout's "
                             "README.md with the default --records and --docs-dir, else none)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings/evaluations run at the same time (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per training (default 1: on a busy 2-core machine more threads "
                             "oversubscribe the cores and run several times slower)")
    data = parser.add_argument_group("data and schedule (fixed per work dir)")
    data.add_argument("--num-training", type=int, default=120,
                      help="training cases (default 120: fold 0 then trains on 96, 17 of them with T2)")
    data.add_argument("--num-test", type=int, default=10)
    data.add_argument("--spacing", type=float, default=6.0, help="isotropic voxel size in mm (default 6)")
    data.add_argument("--data-seed", type=int, default=0, help="seed of the generated cases and of the table")
    data.add_argument("--features", type=int, default=16, help="first-stage width of 3d_quality (default 16)")
    data.add_argument("--batch-size", type=int, default=2, help="batch size of 3d_quality (default 2)")
    data.add_argument("--full-size-plans", action="store_true",
                      help=f"train and evaluate nnU-Net's own {BASE_CONFIGURATION} plans unchanged instead of "
                           f"{CONFIGURATION} (for a GPU; --features/--batch-size do not apply)")
    data.add_argument("--epochs", type=int, default=100)
    data.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    data.add_argument("--val-iterations", type=int, default=4, help="validation iterations per epoch")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.full_size_plans and (args.features, args.batch_size) != (parser.get_default("features"),
                                                                     parser.get_default("batch_size")):
        raise UsageError("--features/--batch-size set the 3d_quality plans; with --full-size-plans "
                         "nnU-Net's own plans are used unchanged")
    work_dir = args.work_dir.resolve()
    if args.report_only and (work_dir / "settings.json").is_file():
        stored = json.loads((work_dir / "settings.json").read_text())
        vars(args).update(stored, full_size_plans=bool(stored.get("full_size_plans")))  # the work dir's, not the flag
    records = records_folder(args.records, settings_of(args))
    if not args.report_only:
        check_settings(work_dir, args)
        generate(work_dir, args)
        check_data(records, work_dir)  # before planning: other data are refused within seconds
        plan(work_dir, args)
        comparison = [t for t in args.trainers if t in list(TRAINERS)[:3]]
        comparison.sort(key=lambda t: t != DMAF)  # per seed the slowest run, (c), starts first
        runs = [(trainer, seed) for group in (comparison, [t for t in args.trainers if t not in comparison])
                for seed in args.seeds for trainer in group]  # (a)-(c) for every seed first, then ablations
        run_all(work_dir, records, runs, args)
    results = collect(work_dir, records, args.trainers, args.seeds)
    print(f"run records: {records}")
    tables = report(results, args)
    print(tables)
    if not args.no_docs and results:
        variant = docs_variant(settings_of(args))
        for path in plot(results, args.docs_dir / "figures", args.num_training - args.num_training * 4 // 5, variant):
            print(f"wrote {path}")
        write_docs(args.docs_dir, tables, variant)
        print(f"wrote the tables into {args.docs_dir / 'benchmarks.md'}")
        default_outputs = args.records.resolve() == RECORDS and args.docs_dir.resolve() == REPO / "docs"
        readme = args.readme or (REPO / "README.md" if default_outputs else None)
        if readme is not None:
            write_readme(readme, readme_summary(args.records))
            print(f"wrote the comparison table into {readme}")


if __name__ == "__main__":
    run_main(main)
