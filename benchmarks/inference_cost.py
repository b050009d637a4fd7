"""Inference cost of DMAF-Net with 1..M modalities present.

The M modality encoders are one grouped encoder that always runs on every channel (a graph
torch.compile traces once for every mask), so the cost does not depend on which modalities are
present. For each number k of present modalities (the first k channels) it prints the FLOPs of one
forward pass (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products), the
median time of a forward pass (``torch.no_grad``, eval mode) and both relative to all modalities,
and the share of the FLOPs spent in the modality encoders: the most that skipping the encoders of
missing modalities could save.

Usage (CPU, well under a minute with the defaults)::

    python benchmarks/inference_cost.py [--patch 48 48 48] [--repeats 2] [--device cpu]
    python benchmarks/inference_cost.py --plans $nnUNet_preprocessed/Dataset990_DMAFDemo/nnUNetPlans.json

Without ``--plans`` the network is built from a BraTS-like nnU-Net 3d_fullres configuration
(PlainConvUNet, 5 stages, 32..320 features, 4 modalities T1/T1ce/T2/FLAIR, 3 regions); with
``--plans`` from that plans file's configuration (channels and outputs from the dataset.json next to
it), with the plans' patch size unless ``--patch`` is given.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_dmaf.architecture.dmaf_net import DMAFNet, build_dmaf_net_from_plans

BRATS_LIKE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
        "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4, "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
BRATS_CHANNELS = ["T1", "T1ce", "T2", "FLAIR"]


def build_network(plans_file: Path | None, configuration: str) -> tuple[DMAFNet, list[str], list[int] | None]:
    """The DMAFNet (eval mode, no deep supervision), channel names, and the plans' patch size."""
    if plans_file is None:
        architecture, names, outputs, patch = BRATS_LIKE, BRATS_CHANNELS, 3, None
    else:
        plans = json.loads(plans_file.read_text())
        config = plans["configurations"][configuration]
        while "architecture" not in config:  # configurations may inherit
            config = {**plans["configurations"][config["inherits_from"]], **config}
        architecture, patch = config["architecture"], config["patch_size"]
        dataset_json = json.loads((plans_file.parent / "dataset.json").read_text())
        names = [dataset_json["channel_names"][k] for k in sorted(dataset_json["channel_names"], key=int)]
        labels = {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}
        has_regions = any(isinstance(v, list) and len(v) > 1 for v in labels.values())
        outputs = len(labels) - 1 if has_regions else len(labels)
    network = build_dmaf_net_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                        architecture["_kw_requires_import"], len(names), outputs,
                                        deep_supervision=False)
    return network.eval(), names, patch


def count_flops(network: DMAFNet, x: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(FLOPs of one forward pass, FLOPs of its modality encoders); also serves as the warm-up pass."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(x, mask)
    encoder = FlopCounterMode(display=False)
    with torch.no_grad(), encoder:
        network.encode(x)
    return counter.get_total_flops(), encoder.get_total_flops()


def time_forward(network: nn.Module, x: torch.Tensor, mask: torch.Tensor, repeats: int) -> float:
    """Median seconds per forward pass."""
    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            network(x, mask)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=Path, help="nnU-Net plans file (default: built-in BraTS-like config)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--patch", type=int, nargs="+", help="input patch size (default 48^3, or the plans')")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward passes per row (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    network, names, plans_patch = build_network(args.plans, args.configuration)
    patch = args.patch or plans_patch or [48, 48, 48]
    network.to(device)
    num = len(names)
    x = torch.randn(1, num, *patch, device=device)
    rows = []
    for k in range(1, num + 1):
        mask = torch.tensor([[c < k for c in range(num)]], device=device)
        flops, encoder_flops = count_flops(network, x, mask)
        rows.append(dict(k=k, subset="+".join(names[:k]), encoder_flops=encoder_flops, flops=flops,
                         seconds=time_forward(network, x, mask, args.repeats)))
    full = rows[-1]
    params = sum(p.numel() for p in network.parameters()) / 1e6
    print(f"DMAF-Net {'from ' + str(args.plans) if args.plans else '(BraTS-like 3d_fullres config)'}: "
          f"{num} modalities, {params:.2f} M parameters, patch {list(patch)}, batch 1, device {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} forward passes")
    print("| present | example subset | GFLOPs | rel. FLOPs | encoders' share | ms / forward | rel. time |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['k']} | {r['subset']} | {r['flops'] / 1e9:.2f} | {r['flops'] / full['flops']:.2f} | "
              f"{r['encoder_flops'] / r['flops']:.2f} | {r['seconds'] * 1e3:.0f} | {r['seconds'] / full['seconds']:.2f} |")
    if num > 1:
        skippable = full["encoder_flops"] * (num - 1) / num
        print(f"Skipping the encoders of {num - 1} missing modalities could save at most "
              f"{skippable / full['flops']:.0%} of the FLOPs ({skippable / 1e9:.2f} GFLOPs).")


if __name__ == "__main__":
    main()
