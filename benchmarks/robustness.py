"""Robustness to missing modalities: mean Dice over every modality subset, three trainers.

Trains, on the same generated BraTS-like demo dataset, plans and fold, for the same short schedule:

(a) ``nnUNetTrainer`` (nnU-Net's default, no missing-modality handling),
(b) ``nnUNetTrainerChannelDropout`` (nnU-Net's U-Net with uniform random channel dropout, p = 0.5),
(c) ``nnUNetTrainerDMAF`` under imbalanced missing rates (``--missing-rates``, default
    T1:0.2,T1ce:0.4,FLAIR:0.6,T2:0.8, the "mr2468" setting of the published tables),

then evaluates each on the labelled test cases for all 15 modality subsets with
``nnUNetv2_dmaf_evaluate_subsets`` (missing channels zeroed; DMAF also gets the mask) and prints
mean Dice per subset and region, and the mean over subsets.

Trained models and evaluations in ``--work-dir`` are reused by later runs (delete it to start over).

Usage (CPU; about 15-25 minutes with the defaults on 2 cores)::

    python benchmarks/robustness.py [--work-dir DIR] [--epochs 10] [--iterations 20]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

DATASET_ID = 990
DATASET = "Dataset990_DMAFDemo"
CONFIGURATION = "3d_fullres"
FOLD = "0"
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerChannelDropout", "nnUNetTrainerDMAF")


def _env(work_dir: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work_dir / "raw"), nnUNet_preprocessed=str(work_dir / "preprocessed"),
               nnUNet_results=str(work_dir / "results"), nnUNet_def_n_proc="1", nnUNet_compile="false")
    env.update(extra)
    return env


def _prepare(work_dir: Path, num_training: int, num_test: int, shape: tuple[int, int, int]) -> None:
    if (work_dir / "preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        return
    from nnunetv2_dmaf.demo_data import generate_demo_dataset
    generate_demo_dataset(work_dir / "raw", DATASET_ID, num_training=num_training, num_test=num_test,
                          shape=shape, overwrite=True)
    subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
                    "-npfp", "1"], check=True, env=_env(work_dir), stdout=subprocess.DEVNULL)


def _train(work_dir: Path, trainer: str, epochs: int, iterations: int, device: str, extra_env: dict) -> float:
    """Trains in a subprocess through nnU-Net's Python API with a shortened schedule; returns seconds."""
    code = (
        "import sys, torch\n"
        "from nnunetv2.run.run_training import get_trainer_from_args\n"
        f"t = get_trainer_from_args('{DATASET_ID}', '{CONFIGURATION}', {FOLD}, '{trainer}', "
        f"device=torch.device('{device}'))\n"
        f"t.num_epochs = {epochs}; t.num_iterations_per_epoch = {iterations}; t.num_val_iterations_per_epoch = 5\n"
        "t.run_training()\n")
    env = _env(work_dir, **extra_env)
    if device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"
    start = time.perf_counter()
    subprocess.run(["python", "-c", code], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _evaluate(work_dir: Path, trainer: str, device: str) -> dict:
    out = work_dir / "evaluation" / trainer
    raw = work_dir / "raw" / DATASET
    subprocess.run(["nnUNetv2_dmaf_evaluate_subsets", "-i", str(raw / "imagesTs"), "-l", str(raw / "labelsTs"),
                    "-o", str(out), "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer,
                    "-chk", "checkpoint_final.pth", "--disable_tta", "-device", device, "--overwrite"],
                   check=True, env=_env(work_dir), stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmark_robustness"))
    parser.add_argument("--num-training", type=int, default=20)
    parser.add_argument("--num-test", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--missing-rates", default="T1:0.2,T1ce:0.4,FLAIR:0.6,T2:0.8",
                        help="nnUNet_dmaf_missing_rates for the DMAF trainer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    args = parser.parse_args(argv)
    work_dir = args.work_dir.resolve()
    _prepare(work_dir, args.num_training, args.num_test, tuple(args.shape))

    summaries = {}
    for trainer in args.trainers:
        model = work_dir / "results" / DATASET / f"{trainer}__nnUNetPlans__{CONFIGURATION}" / f"fold_{FOLD}"
        if (model / "checkpoint_final.pth").is_file():
            print(f"{trainer}: reusing the trained model in {model}", flush=True)
        else:
            extra = {"nnUNet_dmaf_missing_rates": args.missing_rates} if "DMAF" in trainer else {}
            seconds = _train(work_dir, trainer, args.epochs, args.iterations, args.device, extra)
            print(f"{trainer}: trained in {seconds:.0f} s", flush=True)
        summary = work_dir / "evaluation" / trainer / "summary.json"
        summaries[trainer] = json.loads(summary.read_text()) if summary.is_file() else \
            _evaluate(work_dir, trainer, args.device)
    print_report(summaries, args)


def print_report(summaries: dict, args: argparse.Namespace) -> None:
    """Prints mean Dice (over regions) per subset and trainer, and per region averaged over subsets."""
    trainers = list(summaries)
    first = summaries[trainers[0]]
    regions = list(first["metadata"]["regions"])
    subsets = [row["subset"] for row in first["subsets"]]

    def mean_dice(row: dict) -> float:
        return sum(row[f"Dice {r}"] for r in regions) / len(regions)

    print(f"\n{len(subsets)} subsets, {args.num_test} test cases, {args.epochs} epochs x {args.iterations} "
          f"iterations, DMAF missing rates {args.missing_rates}")
    print("| subset | " + " | ".join(trainers) + " |")
    print("|---|" + "---|" * len(trainers))
    for i, subset in enumerate(subsets):
        print(f"| {subset} | " + " | ".join(f"{mean_dice(summaries[t]['subsets'][i]):.3f}" for t in trainers) + " |")
    for region in regions:
        print(f"| **mean {region}** | " + " | ".join(
            f"{summaries[t]['mean_over_subsets'][f'Dice {region}']:.3f}" for t in trainers) + " |")
    print("| **mean Dice over subsets** | " + " | ".join(
        f"{sum(summaries[t]['mean_over_subsets'][f'Dice {r}'] for r in regions) / len(regions):.3f}"
        for t in trainers) + " |")


if __name__ == "__main__":
    main()
