"""The table a paper shows (``nnUNetv2_dmaf_paper_table``): rows = modality subsets, columns = regions,
last row the mean over subsets; one metric (Dice by default, or HD95), as Markdown and CSV.

Input is an evaluation folder of ``nnUNetv2_dmaf_evaluate_subsets`` (``per_case.csv`` and
``evaluation_settings.json``; a run still in progress or interrupted works too: the table then
covers the predictions done so far, and says how many cases each row has). Row order ``paper``: the
published mask-id order (see :mod:`nnunetv2_dmaf.evaluation.paper_conventions`; BraTS and MyoPS
channel names), ``ours``: fewest modalities first, then channel order. Post-processed ET columns
(``--et_postprocess_voxels``) appear next to raw ET.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from nnunetv2_dmaf.atomic_files import atomic_output, write_text_atomic
from nnunetv2_dmaf.command_line_parser import CommandLineParser
from nnunetv2_dmaf.csv_input import read_text
from nnunetv2_dmaf.evaluation.paper_conventions import paper_subset_order
from nnunetv2_dmaf.evaluation.report import MEAN_ROW, read_per_case, summarize
from nnunetv2_dmaf.modalities import all_modality_subsets, subset_name
from nnunetv2_dmaf.user_errors import DataError, UsageError, run_main

SETTINGS_FILE = "evaluation_settings.json"
#: name prefix of the tables written into an evaluation folder (``paper_table_<metric>_<order>.md/.csv``)
PAPER_TABLE_PREFIX = "paper_table_"
METRICS = ("Dice", "HD95")
ORDERS = ("paper", "ours")


def subset_order(channel_names: Sequence[str], order: str) -> list[str]:
    """Subset names in the papers' order (``paper``) or ours; UsageError if the channels have no
    published order."""
    if order == "ours":
        masks = all_modality_subsets(len(channel_names))
    else:
        masks = paper_subset_order(channel_names)
        if masks is None:
            raise UsageError(f"no published subset order for the channels {list(channel_names)} (BraTS: FLAIR, "
                             f"T1ce, T1, T2; MyoPS: C0, DE, T2); use --order ours")
    return [subset_name(m, channel_names) for m in masks]


def region_names_of(per_case: pd.DataFrame) -> list[str]:
    return [c[len("Dice "):] for c in per_case.columns if c.startswith("Dice ")]


def paper_table(per_case: pd.DataFrame, subsets: Sequence[str], metric: str = "Dice") -> pd.DataFrame:
    """Rows = ``subsets`` then ``mean over subsets``; columns = ``<metric> <region>`` per region and
    ``cases`` (number of cases averaged per row)."""
    regions = region_names_of(per_case)
    summary = summarize(per_case, subsets, regions)
    table = summary[[f"{metric} {r}" for r in regions]].rename(columns=lambda c: c[len(metric) + 1:])
    table.insert(len(table.columns), "cases", summary["num_cases"])
    return table


def table_markdown(table: pd.DataFrame, metric: str, digits: int = 2) -> str:
    """Markdown with values x100 for Dice (as the papers print them), mm for HD95; bold mean row."""
    scale, unit = (100.0, "Dice (%)") if metric == "Dice" else (1.0, "HD95 (mm)")
    regions = [c for c in table.columns if c != "cases"]
    lines = ["| Subset | " + " | ".join(regions) + " | cases |", "|---|" + "---:|" * (len(regions) + 1)]
    for subset, row in table.iterrows():
        cells = ["n/a" if pd.isna(row[r]) else f"{row[r] * scale:.{digits}f}" for r in regions]
        cases = "0" if pd.isna(row["cases"]) else str(int(row["cases"]))
        if subset == MEAN_ROW:
            lines.append(f"| **{subset}** | " + " | ".join(f"**{c}**" for c in cells) + f" | {cases} |")
        else:
            lines.append(f"| {subset} | " + " | ".join(cells) + f" | {cases} |")
    return f"{unit} per modality subset\n\n" + "\n".join(lines) + "\n"


def table_paths(prefix: Path) -> tuple[Path, Path]:
    """``PREFIX.md`` and ``PREFIX.csv``."""
    return prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")


def write_paper_table(folder: Path, per_case: pd.DataFrame, channel_names: Sequence[str], order: str,
                      metric: str, output_prefix: Path | None = None) -> tuple[str, list[Path]]:
    """Writes ``<prefix>.md`` and ``<prefix>.csv`` (default prefix: ``folder/paper_table_<metric>_<order>``);
    returns the Markdown and the paths."""
    table = paper_table(per_case, subset_order(channel_names, order), metric)
    markdown = table_markdown(table, metric)
    md_path, csv_path = table_paths(output_prefix or folder / f"{PAPER_TABLE_PREFIX}{metric}_{order}")
    write_text_atomic(md_path, markdown)
    with atomic_output(csv_path) as tmp:
        table.rename_axis("subset").to_csv(tmp, float_format="%.6g")
    return markdown, [md_path, csv_path]


def read_evaluation(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """per_case.csv and the channel names of an evaluation folder; DataError naming the file."""
    settings_path, per_case_path = folder / SETTINGS_FILE, folder / "per_case.csv"
    try:
        channels = list(json.loads(read_text(settings_path))["channels"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{settings_path}: not an evaluation settings file ({e})") from None
    if not per_case_path.is_file():
        raise DataError(f"{per_case_path}: no such file (no prediction finished yet?)")
    try:
        per_case = read_per_case(per_case_path)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{per_case_path}: unreadable ({e})") from None
    missing = [c for c in ("subset", "case", "num_modalities") if c not in per_case.columns]
    if missing or not region_names_of(per_case):
        raise DataError(f"{per_case_path}: not a per-case table of nnUNetv2_dmaf_evaluate_subsets "
                        f"(missing columns {missing or ['Dice <region>']})")
    return per_case, channels


def main(argv: Sequence[str] | None = None) -> None:
    """``nnUNetv2_dmaf_paper_table``."""
    run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    parser = CommandLineParser(
        prog="nnUNetv2_dmaf_paper_table",
        description="Prints the table a paper shows from an nnUNetv2_dmaf_evaluate_subsets output folder: rows = "
                    "modality subsets (published order or ours), columns = regions (post-processed ET next to raw "
                    "ET when evaluated with --et_postprocess_voxels), last row the mean over subsets. Writes it as "
                    "Markdown and CSV.",
        epilog="Example: nnUNetv2_dmaf_paper_table -i eval_brats2020 --order paper --metric Dice")
    parser.add_argument("-i", required=True, type=Path, help="output folder of nnUNetv2_dmaf_evaluate_subsets")
    parser.add_argument("--order", choices=ORDERS, default="paper",
                        help="row order: the published papers' mask-id order, or ours (default: %(default)s)")
    parser.add_argument("--metric", choices=METRICS, default="Dice", help="default: %(default)s")
    parser.add_argument("-o", type=Path, default=None,
                        help="output prefix (writes PREFIX.md and PREFIX.csv; default: -i/paper_table_METRIC_ORDER, "
                             "which is rewritten from the evaluation each time)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing -o PREFIX.md / PREFIX.csv")
    args = parser.parse_args(argv)
    if not args.i.is_dir():
        raise UsageError(f"-i {args.i}: no such folder")
    if args.o is not None:
        if not args.o.parent.is_dir():
            raise UsageError(f"-o {args.o}: folder {args.o.parent} does not exist")
        existing = [p for p in table_paths(args.o) if p.exists()]
        if existing and not args.overwrite:
            raise UsageError(f"{existing[0]} already exists; pass --overwrite to replace it")
    per_case, channels = read_evaluation(args.i)
    markdown, paths = write_paper_table(args.i, per_case, channels, args.order, args.metric, args.o)
    print(markdown)
    print("Wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
