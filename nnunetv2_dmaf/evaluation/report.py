"""Tables and plot of a modality-subset evaluation: CSV, JSON, Markdown and a Dice heat map.

Input is the per-case table (one row per subset and case; columns ``subset``, ``num_modalities``,
``case``, ``Dice <region>``, ``HD95 <region>``, and optionally further per-case columns such as
``hd95_empty_penalty_mm``). Summaries average over cases per subset, and the
last row ``mean over subsets`` averages the subset rows with equal weight.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nnunetv2_dmaf.atomic_files import atomic_output, write_text_atomic

MEAN_ROW = "mean over subsets"
OUTPUT_FILES = ("per_case.csv", "summary.csv", "summary.json", "summary.md", "dice_heatmap.png")


def metric_columns(region_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Dice columns, HD95 columns) of the per-case table."""
    return [f"Dice {r}" for r in region_names], [f"HD95 {r}" for r in region_names]


def summarize(per_case: pd.DataFrame, subset_order: Sequence[str], region_names: Sequence[str]) -> pd.DataFrame:
    """Mean per subset (rows in ``subset_order``) plus the mean over subsets; adds 'Dice mean' and
    'HD95 mean' (mean over regions) columns."""
    dice_cols, hd_cols = metric_columns(region_names)
    grouped = per_case.groupby("subset", sort=False)
    summary = grouped[dice_cols + hd_cols].mean().reindex(list(subset_order))
    summary.insert(0, "num_cases", grouped["case"].nunique().reindex(list(subset_order)))
    summary.insert(0, "num_modalities", grouped["num_modalities"].first().reindex(list(subset_order)))
    summary["Dice mean"] = summary[dice_cols].mean(axis=1)
    summary["HD95 mean"] = summary[hd_cols].mean(axis=1)
    mean_row = summary.drop(columns=["num_modalities", "num_cases"]).mean(axis=0)
    summary.loc[MEAN_ROW] = {**mean_row.to_dict(), "num_modalities": np.nan,
                             "num_cases": summary["num_cases"].min()}
    summary["num_modalities"] = summary["num_modalities"].astype("Int64")
    summary["num_cases"] = summary["num_cases"].astype("Int64")
    summary.index.name = "subset"
    return summary


def markdown_table(summary: pd.DataFrame, region_names: Sequence[str], digits: int = 3) -> str:
    """Rows = subsets (+ mean over subsets, bold), columns = Dice and HD95 (mm) per region and mean."""
    columns = [f"Dice {r}" for r in region_names] + ["Dice mean"] + \
              [f"HD95 {r}" for r in region_names] + ["HD95 mean"]
    header = ["Subset"] + [c if c.startswith("Dice") else f"{c} (mm)" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for subset, row in summary.iterrows():
        cells = [f"{row[c]:.{digits}f}" if not math.isnan(row[c]) else "n/a" for c in columns]
        if subset == MEAN_ROW:
            lines.append("| " + " | ".join([f"**{subset}**"] + [f"**{c}**" for c in cells]) + " |")
        else:
            lines.append("| " + " | ".join([str(subset)] + cells) + " |")
    return "\n".join(lines) + "\n"


def plot_dice_heatmap(summary: pd.DataFrame, region_names: Sequence[str], path: str | Path,
                      title: str = "Dice per modality subset") -> None:
    """Heat map of mean Dice, rows = subsets (+ mean over subsets), columns = regions + mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [f"Dice {r}" for r in region_names] + ["Dice mean"]
    values = summary[columns].to_numpy(dtype=float)
    rows = [str(i) for i in summary.index]
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(columns), 1.2 + 0.38 * len(rows)))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), [c[len("Dice "):] for c in columns], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, "n/a" if math.isnan(value) else f"{value:.2f}", ha="center", va="center",
                color="black" if value > 0.6 else "white", fontsize=8)
    if MEAN_ROW in rows:
        ax.axhline(rows.index(MEAN_ROW) - 0.5, color="white", linewidth=2)
    fig.colorbar(image, ax=ax, label="Dice")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-safe records (NaN -> None)."""
    return json.loads(frame.to_json(orient="records"))


def write_per_case(path: str | Path, per_case: pd.DataFrame) -> None:
    """per_case.csv, atomically (rewritten after every prediction, so an interrupted run keeps its rows)."""
    with atomic_output(path) as tmp:
        per_case.to_csv(tmp, index=False, float_format="%.6g")


def read_per_case(path: str | Path) -> pd.DataFrame:
    """per_case.csv as written by :func:`write_per_case`; case ids and subsets stay text (case ``001``
    must not come back as the number 1). Raises pandas' ValueError / ParserError on a broken file."""
    return pd.read_csv(path, dtype={"case": str, "subset": str})


def write_report(output_folder: str | Path, per_case: pd.DataFrame, summary: pd.DataFrame,
                 region_names: Sequence[str], metadata: dict) -> dict[str, Path]:
    """Writes :data:`OUTPUT_FILES` into ``output_folder`` (each atomically); returns name -> path."""
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in OUTPUT_FILES}
    write_per_case(paths["per_case.csv"], per_case)
    with atomic_output(paths["summary.csv"]) as tmp:
        summary.to_csv(tmp, float_format="%.6g")
    subsets = summary.drop(index=MEAN_ROW).reset_index()
    mean_row = summary.loc[[MEAN_ROW]].drop(columns=["num_modalities"]).reset_index()
    payload = {"metadata": metadata, "subsets": _records(subsets), "mean_over_subsets": _records(mean_row)[0],
               "per_case": _records(per_case)}
    write_text_atomic(paths["summary.json"], json.dumps(payload, indent=2))
    notes = "\n".join(f"- {k}: {v}" for k, v in metadata.get("conventions", {}).items())
    write_text_atomic(paths["summary.md"], f"# Evaluation over modality subsets\n\n"
                                           f"{markdown_table(summary, region_names)}" + (f"\n{notes}\n" if notes else ""))
    with atomic_output(paths["dice_heatmap.png"]) as tmp:
        plot_dice_heatmap(summary, region_names, tmp,
                          f"Dice per modality subset ({int(summary['num_cases'].min())} case(s))")
    return paths
