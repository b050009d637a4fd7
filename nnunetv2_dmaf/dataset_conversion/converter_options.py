"""The command-line options every converter shares: the output dataset (id, name, root, overwrite),
worker processes and the geometry tolerance between the channels of a case."""
from __future__ import annotations

import argparse
import os

from nnunetv2_dmaf.dataset_conversion.image_files import DEFAULT_GEOMETRY_TOLERANCE

DEFAULT_NUM_PROCESSES = max(1, min(4, os.cpu_count() or 1))


def add_output_arguments(parser: argparse.ArgumentParser, default_id: int | None, default_name: str | None,
                         id_help: str | None = None, name_help: str | None = None) -> None:
    """-d/--dataset-id, -n/--name, --output-root, --overwrite, -np, --geometry-tolerance
    (``*_help``: how the default is shown, for defaults that depend on other options)."""
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help=f"nnU-Net dataset id (default: {id_help or default_id})")
    parser.add_argument("-n", "--name", default=default_name,
                        help="dataset name, the output folder is DatasetNNN_NAME "
                             f"(default: {name_help or default_name})")
    parser.add_argument("--output-root", default=None,
                        help="folder in which DatasetNNN_NAME is created (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DatasetNNN_NAME folder")
    add_processes_argument(parser)
    parser.add_argument("--geometry-tolerance", type=float, default=DEFAULT_GEOMETRY_TOLERANCE,
                        help="absolute tolerance for origin/direction differences between the channels and "
                             f"the label of a case (default: {DEFAULT_GEOMETRY_TOLERANCE}); sizes must match "
                             "exactly and spacings as strictly as nnU-Net requires")


def add_processes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-np", "--num-processes", type=int, default=DEFAULT_NUM_PROCESSES,
                        help=f"worker processes (default: {DEFAULT_NUM_PROCESSES})")
