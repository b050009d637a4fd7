"""Cost of nnUNetTrainerDMAF versus nnU-Net's default nnUNetTrainer on the same plans.

Prints seconds per training iteration (``train_step`` on batches from each trainer's own data
loader, data loading excluded; wall time and the process's CPU time, which a busy machine distorts
less), peak memory during training, and sliding-window-free inference time
on one patch (DMAF with all modalities and with one), then the DMAF/baseline ratios.

Usage (CPU, about 3-6 minutes with the defaults)::

    python benchmarks/training_cost.py [--work-dir DIR] [--shape 64 64 64] [--iterations 10]

On a GPU, at BraTS size (nnU-Net plans a 3d_fullres patch of about 128^3 for a 240x240x155 dataset;
fingerprinting it takes about 5 GB of host memory), with nnU-Net's default torch.compile: the warm-up
iterations include the compilation, the timed ones run the compiled step::

    python benchmarks/training_cost.py --device cuda --shape 155 240 240 --num-cases 4 --warmup 5 --iterations 30

It generates the demo dataset (nnunetv2_dmaf.demo_data) in ``--work-dir`` and runs nnU-Net's
planning and preprocessing once (kept for later runs). Each trainer is measured in its own fresh
process one after the other, so peak memory is not shared: on CPU the peak resident set size
(Linux VmHWM, reset before the timed steps), on CUDA ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID = 990
CONFIGURATION = "3d_fullres"


def _prepare(work_dir: Path, shape: tuple[int, int, int], num_cases: int) -> None:
    os.environ.update(nnUNet_raw=str(work_dir / "raw"), nnUNet_preprocessed=str(work_dir / "preprocessed"),
                      nnUNet_results=str(work_dir / "results"), nnUNet_def_n_proc="1")
    plans = work_dir / "preprocessed" / "Dataset990_DMAFDemo" / "nnUNetPlans.json"
    if plans.is_file():
        return
    from nnunetv2_dmaf.demo_data import generate_demo_dataset
    generate_demo_dataset(work_dir / "raw", DATASET_ID, num_training=num_cases, num_test=0, shape=shape,
                          overwrite=True)
    subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
                    "-npfp", "1"], check=True, stdout=subprocess.DEVNULL)


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux)
        f.write("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure(trainer_name: str, device_name: str, iterations: int, warmup: int, queue) -> None:
    """Runs in a fresh process: initialise the trainer, time train_step and inference."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(0)
    device = torch.device(device_name)
    trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, 0, trainer_name, device=device)
    trainer.print_to_log_file = lambda *a, **k: None  # keep the benchmark output readable
    trainer.initialize()
    trainer.disable_checkpointing = True
    train_loader, _ = trainer.get_dataloaders()
    trainer.network.train()
    batches = [next(train_loader) for _ in range(warmup + iterations)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for batch in batches[:warmup]:
        trainer.train_step(batch)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in batches[warmup:]:
        trainer.train_step(batch)
    sync()
    seconds_per_iteration = (time.perf_counter() - start) / iterations
    cpu_seconds_per_iteration = (time.process_time() - cpu_start) / iterations
    peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else _peak_rss_mb()

    network = trainer.network
    network.eval()
    network.decoder.deep_supervision = False
    patch = batches[0]["data"][:1].to(device)
    num_channels = patch.shape[1]
    inference = {}
    masks = {"all": None}
    if hasattr(network, "set_inference_modality_mask"):
        masks["one"] = [True] + [False] * (num_channels - 1)
    for label, mask in masks.items():
        x = patch.clone()
        if mask is not None:
            x[:, 1:] = 0
            network.set_inference_modality_mask(mask)
        with torch.no_grad():
            for _ in range(2):
                network(x)
            sync()
            start = time.perf_counter()
            for _ in range(5):
                network(x)
            sync()
        inference[label] = (time.perf_counter() - start) / 5
        if mask is not None:
            network.set_inference_modality_mask(None)
    queue.put(dict(trainer=trainer_name, s_per_iter=seconds_per_iteration, cpu_s_per_iter=cpu_seconds_per_iteration,
                   peak_mb=peak_mb,
                   patch=list(trainer.configuration_manager.patch_size), batch_size=trainer.batch_size,
                   parameters=sum(p.numel() for p in network.parameters()), inference=inference))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmark_work"))
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), help="demo volume shape")
    parser.add_argument("--num-cases", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trainers", nargs=2, default=("nnUNetTrainer", "nnUNetTrainerDMAF"),
                        metavar=("BASELINE", "DMAF"))
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile of both networks on CUDA (auto: nnU-Net's default, on); nnU-Net never compiles on CPU")
    args = parser.parse_args(argv)
    if args.compile != "auto":
        os.environ["nnUNet_compile"] = "true" if args.compile == "on" else "false"
    _prepare(args.work_dir.resolve(), tuple(args.shape), args.num_cases)
    if args.device == "cpu":
        os.environ["nnUNet_n_proc_DA"] = "0"  # after planning: nnU-Net's planner crashes with 0

    context = mp.get_context("spawn")
    results = []
    for name in args.trainers:
        queue = context.Queue()
        process = context.Process(target=_measure, args=(name, args.device, args.iterations, args.warmup, queue))
        process.start()
        results.append(queue.get())
        process.join()
        if process.exitcode != 0:
            sys.exit(f"measuring {name} failed (exit code {process.exitcode})")

    base, dmaf = results
    compiled = "off (nnU-Net never compiles on CPU)" if args.device == "cpu" else os.environ.get("nnUNet_compile", "true")
    print(f"\nplans: {CONFIGURATION}, patch {base['patch']}, batch size {base['batch_size']}, device {args.device}, "
          f"torch.compile {compiled}, {args.iterations} timed iterations after {args.warmup} warm-up")
    print(f"{'trainer':<24}{'params (M)':>12}{'s / iter':>10}{'CPU s / iter':>14}{'peak MB':>10}{'infer all (s)':>15}"
          f"{'infer 1 mod (s)':>17}")
    for r in results:
        one = r["inference"].get("one")
        print(f"{r['trainer']:<24}{r['parameters'] / 1e6:>12.2f}{r['s_per_iter']:>10.3f}{r['cpu_s_per_iter']:>14.3f}"
              f"{r['peak_mb']:>10.0f}{r['inference']['all']:>15.4f}{(f'{one:.4f}' if one is not None else '-'):>17}")
    print(f"ratio DMAF / baseline: training iteration {dmaf['s_per_iter'] / base['s_per_iter']:.2f}x "
          f"(process CPU time: {dmaf['cpu_s_per_iter'] / base['cpu_s_per_iter']:.2f}x; on a busy machine trust this one), "
          f"peak memory {dmaf['peak_mb'] / base['peak_mb']:.2f}x, "
          f"inference (all modalities) {dmaf['inference']['all'] / base['inference']['all']:.2f}x")
    if "one" in dmaf["inference"]:
        print("DMAF inference with one modality / all modalities: "
              f"{dmaf['inference']['one'] / dmaf['inference']['all']:.2f}x")


if __name__ == "__main__":
    main()
