"""Activation memory and op count of one training step: DMAF-Net versus nnU-Net's U-Net, same plans.

For nnU-Net's PlainConvUNet and for DMAFNet (all modalities present, and 2 of M) on the same
configuration it prints

* the bytes of tensors saved for backward in one training forward pass (``saved_tensors_hooks``,
  each storage counted once): the activation memory that decides whether a patch/batch fits a GPU;
* the number of aten operators dispatched by forward + backward (``TorchDispatchMode``, in a separate
  step without the hooks): on a fast GPU a step with many small kernels is launch-bound;

and the DMAF / U-Net ratios. The DMAF step includes what training runs: the uni-modal decoder on every
present pair, the distillation heads and the distillation losses (``CrossModalDistillation``).

Usage (CPU, about a minute at 64^3)::

    python benchmarks/training_graph_cost.py [--patch 64 64 64] [--batch 2] [--plans nnUNetPlans.json]

Without ``--plans`` a BraTS-like 3d_fullres configuration is used (see inference_cost.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch.utils._python_dispatch import TorchDispatchMode

from inference_cost import BRATS_CHANNELS, BRATS_LIKE
from nnunetv2_dmaf.architecture.dmaf_net import build_dmaf_net_from_plans
from nnunetv2_dmaf.training.distillation import CrossModalDistillation, DistillationSettings


class OpCounter(TorchDispatchMode):
    """Counts aten operator calls."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def saved_bytes_and_ops(step, module: torch.nn.Module) -> tuple[int, int]:
    """(saved bytes, aten ops) of one training step: ``step()`` (returns the loss), then backward.

    One unmeasured step first, as in training: what a network computes once and keeps (DMAF's
    position codes) is not part of the per-step count. Then one step under the saved-tensor hooks
    (bytes) and one under the op counter (ops), separately: packing a saved tensor through hooks
    dispatches an extra ``detach`` that a training step does not run."""
    step().backward()
    module.zero_grad(set_to_none=True)
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device.type)] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    module.zero_grad(set_to_none=True)
    counter = OpCounter()
    with counter:
        step().backward()
    module.zero_grad(set_to_none=True)
    return sum(seen.values()), counter.count


def architecture(plans: Path | None, configuration: str) -> tuple[dict, list[str], int]:
    if plans is None:
        return BRATS_LIKE, BRATS_CHANNELS, 3
    p = json.loads(plans.read_text())
    arch = p["configurations"][configuration]["architecture"]
    dataset = json.loads((plans.parent / "dataset.json").read_text())
    names = [dataset["channel_names"][k] for k in sorted(dataset["channel_names"], key=int)]
    labels = dataset["labels"]
    outputs = len(labels) - 1 if any(isinstance(v, (list, tuple)) for v in labels.values()) else len(labels)
    return arch, names, outputs


def build_unet(arch: dict, channels: int, outputs: int) -> torch.nn.Module:
    """nnU-Net's network for the configuration, built as nnU-Net builds it."""
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  channels, outputs, allow_init=True, deep_supervision=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--plans", type=Path, default=None)
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    args = parser.parse_args(argv)
    arch, names, outputs = architecture(args.plans, args.configuration)
    m = len(names)
    torch.manual_seed(0)
    x = torch.randn(args.batch, m, *args.patch)
    unet = build_unet(arch, m, outputs).train()
    dmaf = build_dmaf_net_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     m, outputs, True).train()
    distill = CrossModalDistillation(DistillationSettings(), outputs, has_regions=True)

    def unet_step():
        return sum(o.float().mean() for o in unet(x))

    def dmaf_step(mask: torch.Tensor):
        def step():
            out, features = dmaf(x, mask, return_features=True)
            features = features.present_pairs(mask)
            targets = [torch.ones(args.batch, outputs, *o.shape[2:], dtype=torch.bool) for o in out]
            terms = distill(features, targets)
            return sum(o.float().mean() for o in out) + sum(u.float().mean() for u in features.unimodal_logits) \
                + sum(v.mean() for v in terms.values())
        return step

    rows = [("nnU-Net PlainConvUNet", *saved_bytes_and_ops(unet_step, unet))]
    full = torch.ones(args.batch, m, dtype=torch.bool)
    half = torch.zeros(args.batch, m, dtype=torch.bool)
    half[:, : max(1, m // 2)] = True
    rows.append((f"DMAFNet, {m} of {m} modalities", *saved_bytes_and_ops(dmaf_step(full), dmaf)))
    rows.append((f"DMAFNet, {max(1, m // 2)} of {m} modalities", *saved_bytes_and_ops(dmaf_step(half), dmaf)))
    print(f"\npatch {args.patch}, batch {args.batch}, {m} modalities ({', '.join(names)}), training forward + backward")
    print(f"{'network':<30}{'saved MB':>10}{'x U-Net':>9}{'aten ops':>10}{'x U-Net':>9}")
    base_bytes, base_ops = rows[0][1], rows[0][2]
    for name, saved, ops in rows:
        print(f"{name:<30}{saved / 2 ** 20:>10.0f}{saved / base_bytes:>9.2f}{ops:>10d}{ops / base_ops:>9.2f}")


if __name__ == "__main__":
    main()
