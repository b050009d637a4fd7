"""nnU-Net's whole pipeline with a DMAF trainer, through nnU-Net's own commands, on the demo data.

Runs, and prints the duration of, each step:

1. the demo dataset (``nnunetv2_dmaf.demo_data``) and ``nnUNetv2_plan_and_preprocess``;
2. ``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER --npz`` for every configuration and fold
   (5-fold cross-validation; folds already trained are kept);
3. ``nnUNetv2_find_best_configuration`` over the configurations (cross-validation Dice of each, of
   their ensemble, and the post-processing it chooses);
4. ``nnUNetv2_predict`` of the test images with every configuration (``--save_probabilities``),
   ``nnUNetv2_ensemble`` of the predictions, and ``nnUNetv2_apply_postprocessing`` of the chosen
   model's (or ensemble's) predictions with the post-processing chosen for it, as the instructions
   find_best_configuration writes say;
5. ``nnUNetv2_evaluate_folder`` of the ensemble and of the post-processed choice on the test labels.

Usage (CPU, about 15-30 minutes with the tiny trainer; not a test)::

    python benchmarks/nnunet_pipeline.py --work-dir /tmp/pipeline [--trainer nnUNetTrainerDMAF_tiny]
        [--configurations 2d 3d_fullres] [--folds 0 1 2 3 4] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID = 990
DATASET = "Dataset990_DMAFDemo"


def run(step: str, cmd: list[str], env: dict) -> str:
    """Runs one nnU-Net command; prints its duration; exits with its output tail if it fails."""
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{step} failed (exit {result.returncode}): {' '.join(cmd)}\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    print(f"  {step}: {time.perf_counter() - start:.0f} s", flush=True)
    return result.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--trainer", default="nnUNetTrainerDMAF_tiny")
    parser.add_argument("--configurations", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_def_n_proc="1")
    train_env = dict(env, nnUNet_n_proc_DA="0") if args.device == "cpu" else env
    results = work / "results" / DATASET
    total = time.perf_counter()

    print("1. demo dataset, planning and preprocessing", flush=True)
    if not (work / "preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        os.environ.update(nnUNet_raw=env["nnUNet_raw"])
        from nnunetv2_dmaf.demo_data import generate_demo_dataset
        generate_demo_dataset(work / "raw", DATASET_ID, num_training=10, num_test=4, seed=0, overwrite=True)
        run("nnUNetv2_plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c",
                                            *args.configurations, "-np", *["1"] * len(args.configurations),
                                            "-npfp", "1"], env)

    print(f"2. {len(args.folds)}-fold cross-validation of {args.trainer} ({', '.join(args.configurations)})", flush=True)
    for configuration in args.configurations:
        for fold in args.folds:
            fold_folder = results / f"{args.trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"
            if (fold_folder / "validation" / "summary.json").is_file():
                continue
            run(f"nnUNetv2_train {configuration} fold {fold}",
                ["nnUNetv2_train", str(DATASET_ID), configuration, fold, "-tr", args.trainer, "--npz",
                 "-device", args.device], train_env)

    print("3. nnUNetv2_find_best_configuration", flush=True)
    out = run("nnUNetv2_find_best_configuration",
              ["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", *args.configurations, "-tr", args.trainer,
               "-f", *args.folds, "-np", "1"], env)
    print("  " + "\n  ".join(line for line in out.splitlines() if "Dice" in line or "best" in line.lower())[:2000])
    info = json.loads((results / "inference_information.json").read_text())
    best = info["best_model_or_ensemble"]
    for name, dice in info["all_results"].items():
        print(f"  cross-validation Dice {name}: {dice:.4f}")
    chosen = [m["configuration"] for m in best["selected_model_or_models"]]
    print(f"  chosen: {' + '.join(chosen)} (Dice {best['result_on_crossval_pre_pp']:.4f}, after its "
          f"post-processing {best['result_on_crossval_post_pp']:.4f})")

    print("4. prediction of the test cases, ensembling, post-processing", flush=True)
    predictions = []
    for configuration in args.configurations:
        folder = work / "test_predictions" / configuration
        run(f"nnUNetv2_predict {configuration}",
            ["nnUNetv2_predict", "-i", str(work / "raw" / DATASET / "imagesTs"), "-o", str(folder), "-d",
             str(DATASET_ID), "-c", configuration, "-tr", args.trainer, "-f", *args.folds, "--save_probabilities",
             "-device", args.device, "-npp", "1", "-nps", "1"], env)
        predictions.append(str(folder))
    ensemble = work / "test_predictions" / "ensemble"
    run("nnUNetv2_ensemble", ["nnUNetv2_ensemble", "-i", *predictions, "-o", str(ensemble), "-np", "1"], env)
    selected = ensemble if len(chosen) > 1 else work / "test_predictions" / chosen[0]
    postprocessed = work / "test_predictions" / "selected_postprocessed"
    run(f"nnUNetv2_apply_postprocessing ({' + '.join(chosen)})",
        ["nnUNetv2_apply_postprocessing", "-i", str(selected), "-o", str(postprocessed), "-pp_pkl_file",
         best["postprocessing_file"], "-np", "1", "-plans_json", best["some_plans_file"]], env)

    print("5. evaluation on the test labels", flush=True)
    for label, folder in (("ensemble", ensemble), (f"{' + '.join(chosen)}, post-processed", postprocessed)):
        run(f"nnUNetv2_evaluate_folder ({label})",
            ["nnUNetv2_evaluate_folder", str(work / "raw" / DATASET / "labelsTs"), str(folder), "-djfile",
             str(work / "raw" / DATASET / "dataset.json"), "-pfile", best["some_plans_file"], "-np", "1"], env)
        summary = json.loads((folder / "summary.json").read_text())
        print(f"  test Dice {label}: " + ", ".join(f"{k}: {v['Dice']:.4f}" for k, v in summary["mean"].items()))
    print(f"pipeline finished in {(time.perf_counter() - total) / 60:.1f} min")


if __name__ == "__main__":
    main()
