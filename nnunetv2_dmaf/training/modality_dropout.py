"""Imbalanced modality dropout: user configuration and the batchgeneratorsv2 transform.

Two sources of missingness, combinable (see docs/training_method.md):

* **missing rates** ``nnUNet_dmaf_missing_rates="FLAIR:0.6,T1:0.2"``: every training sample drops
  modality m independently with probability r_m (names = dataset.json ``channel_names``,
  case-insensitive; unnamed modalities have rate 0);
* **availability table** ``modality_availability.csv`` (``case_id,<channel names...>``, 0/1, mapped
  by name): a fixed set of modalities per case. Unavailable modalities are treated as non-existent:
  zeroed in every training and validation iteration.

Per sample the transform produces two masks (bool [M], True = present):

* ``available_mask``: what the case has: the table's row (all True without a table), AND the channels
  that hold data before augmentation (``data_present_mask`` of :class:`ChannelPresenceTransform`), so
  a zero-filled channel counts as missing even when no table says so;
* ``modality_mask``: ``available_mask`` with the rate-based drops applied -- what the network sees.
  Every channel outside ``modality_mask`` is set to exactly zero (as a missing channel is at inference).

Validation (``fixed_per_case=True``): the rate-based subset of each case is drawn once from a
generator seeded with the case id, so the per-epoch pseudo-Dice always sees the same inputs.

Never all dropped: the drops are resampled until at least one available modality remains, i.e. the
mask follows the independent-drop distribution conditioned on "not empty". A modality with rate 1.0
is therefore never present. If every available modality of a case has rate 1.0, the case keeps its
available set (there is nothing valid to sample).
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunetv2_dmaf.availability import AVAILABILITY_FILENAME, AvailabilityTableError, read_availability_table
from nnunetv2_dmaf.modalities import channel_index_by_name, channel_names_from_dataset_json
from nnunetv2_dmaf.training.channel_presence import DATA_PRESENT_KEY

ENV_MISSING_RATES = "nnUNet_dmaf_missing_rates"
ENV_AVAILABILITY_TABLE = "nnUNet_dmaf_availability_table"
TABLE_FILENAME = AVAILABILITY_FILENAME
_DISABLED_VALUES = ("", "none", "off", "0", "false")


def parse_missing_rates(spec: str | Mapping[str, float] | None, channel_names: Sequence[str]) -> np.ndarray:
    """Parses ``"FLAIR:0.6,T1:0.2"`` (or a {name: rate} mapping) into rates [M] in channel order.

    Separators ``,`` or ``;`` between entries, ``:`` or ``=`` between name and rate. Names are
    matched case-insensitively against ``channel_names``; unnamed modalities get 0. Raises ValueError
    for unknown or repeated names, non-numbers, rates outside [0, 1], or 1.0 for every modality.
    """
    rates = np.zeros(len(channel_names), dtype=np.float64)
    if spec is None:
        return rates
    if isinstance(spec, str):
        entries = [e.strip() for e in spec.replace(";", ",").split(",") if e.strip()]
        pairs = []
        for entry in entries:
            sep = ":" if ":" in entry else "=" if "=" in entry else None
            if sep is None:
                raise ValueError(f"missing rate entry {entry!r} is not of the form NAME:RATE (e.g. 'FLAIR:0.6')")
            name, value = entry.split(sep, 1)
            pairs.append((name, value))
    else:
        pairs = list(spec.items())
    index = channel_index_by_name(channel_names)
    assigned: set[int] = set()
    for name, value in pairs:
        key = str(name).strip().lower()
        if key not in index:
            duplicated = [n for n in channel_names if n.strip().lower() == key]
            reason = "is ambiguous (several channels have that name)" if duplicated else "is not a channel name"
            raise ValueError(f"missing rate for {str(name).strip()!r}: {reason}; dataset.json channel_names are "
                             f"{list(channel_names)}")
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"missing rate for {str(name).strip()!r} is not a number: {value!r}") from None
        if not 0.0 <= rate <= 1.0 or np.isnan(rate):
            raise ValueError(f"missing rate for {str(name).strip()!r} must be in [0, 1], got {rate}")
        if index[key] in assigned:
            raise ValueError(f"missing rate for {channel_names[index[key]]!r} is given twice")
        assigned.add(index[key])
        rates[index[key]] = rate
    if len(rates) and np.all(rates >= 1.0):
        raise ValueError(f"missing rates drop every modality always ({dict(zip(channel_names, rates.tolist()))}); at least "
                         f"one modality needs a rate below 1")
    return rates


def sample_modality_mask(available: torch.Tensor, missing_rates: torch.Tensor,
                         rng: np.random.Generator | None = None) -> torch.Tensor:
    """Drops each available modality with its rate, conditioned on keeping at least one.

    Uses numpy's global RNG by default, which nnU-Net's data-augmentation workers reseed per worker
    (torch's RNG is inherited unchanged by forked workers).

    Args:
        available: bool [M], at least one True.
        missing_rates: float [M] in [0, 1].
        rng: optional numpy Generator (reproducible sampling).
    Returns:
        bool [M], a non-empty subset of ``available``.
    """
    keep_prob = (1.0 - missing_rates.double()).clamp(0, 1).numpy()
    available_np = available.numpy().astype(bool)
    if not bool((keep_prob[available_np] > 0).any()):
        return available.clone()  # every available modality has rate 1: nothing valid to drop to
    draw = np.random.random_sample if rng is None else rng.random
    while True:  # rejection sampling = the independent-drop distribution conditioned on "non-empty"
        mask = available_np & (draw(len(keep_prob)) < keep_prob)
        if mask.any():
            return torch.from_numpy(mask)


@dataclass
class ModalityDropoutConfig:
    """What the user configured. ``missing_rates`` [M] in channel order; ``availability`` maps case id
    to bool [M] (None without a table)."""
    channel_names: tuple[str, ...]
    missing_rates: np.ndarray
    availability: dict[str, np.ndarray] | None = None
    table_path: str | None = None
    rates_source: str | None = field(default=None, compare=False)

    @property
    def mode(self) -> str:
        """'complete' (no missingness), 'rates', 'table' or 'table+rates'."""
        has_rates = bool(np.any(self.missing_rates > 0))
        if self.availability is not None:
            return "table+rates" if has_rates else "table"
        return "rates" if has_rates else "complete"

    def rates_by_name(self) -> dict[str, float]:
        return {n: float(r) for n, r in zip(self.channel_names, self.missing_rates)}

    def describe(self) -> str:
        """One line for the training log."""
        text = f"modality dropout mode: {self.mode}; missing rates {self.rates_by_name()}"
        if self.rates_source:
            text += f" (from {self.rates_source})"
        if self.availability is not None:
            masks = np.stack(list(self.availability.values()))
            missing = {n: round(float(1 - masks[:, i].mean()), 3) for i, n in enumerate(self.channel_names)}
            text += (f"; availability table {self.table_path} ({len(self.availability)} cases, missing fraction "
                     f"{missing})")
        return text

    def to_dict(self) -> dict:
        """JSON-able record (stored in checkpoints as 'dmaf_training_config')."""
        return {"mode": self.mode, "channel_names": list(self.channel_names),
                "missing_rates": self.rates_by_name(), "availability_table": self.table_path,
                "availability": None if self.availability is None else
                {k: [bool(v) for v in m] for k, m in sorted(self.availability.items())}}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ModalityDropoutConfig":
        names = tuple(record["channel_names"])
        availability = record.get("availability")
        return cls(names, parse_missing_rates(record.get("missing_rates") or {}, names),
                   None if availability is None else {k: np.asarray(v, dtype=bool) for k, v in availability.items()},
                   record.get("availability_table"), rates_source="checkpoint")

    def same_setup(self, other: "ModalityDropoutConfig") -> bool:
        """Same rates and same per-case availability (the table's path may differ)."""
        if self.channel_names != other.channel_names or not np.allclose(self.missing_rates, other.missing_rates):
            return False
        if (self.availability is None) != (other.availability is None):
            return False
        return self.availability is None or (
            self.availability.keys() == other.availability.keys()
            and all(np.array_equal(v, other.availability[k]) for k, v in self.availability.items()))

    def check_cases(self, case_ids: Sequence[str]) -> None:
        """AvailabilityTableError (a DataError) if the table lacks any of ``case_ids``."""
        if self.availability is None:
            return
        missing = sorted(set(case_ids) - set(self.availability))
        if missing:
            raise AvailabilityTableError(f"availability table {self.table_path} has no row for {len(missing)} "
                                         f"case(s) used in training/validation, e.g. {missing[:5]}; add them "
                                         f"(case_id = nnU-Net case identifier)")

    def training_transform(self, extra_rates: Sequence[float] | None = None) -> "ModalityDropoutTransform":
        """Per-iteration dropout with the configured rates (combined with ``extra_rates``, e.g. a
        baseline's uniform channel dropout: a modality survives both independently)."""
        rates = self.missing_rates if extra_rates is None else \
            1 - (1 - self.missing_rates) * (1 - np.asarray(extra_rates, dtype=np.float64))
        return ModalityDropoutTransform(rates, self.availability)

    def validation_transform(self) -> "ModalityDropoutTransform":
        """Validation sees the configured missingness, fixed per case: the table's set, then a subset
        drawn with the missing rates from a generator seeded with the case id."""
        return ModalityDropoutTransform(self.missing_rates, self.availability, fixed_per_case=True)

    def describe_validation(self) -> str:
        """One line for the log: what the per-epoch pseudo-Dice is computed on."""
        parts = []
        if self.availability is not None:
            parts.append("each case's available modalities from the table")
        if np.any(self.missing_rates > 0):
            parts.append(f"a fixed subset per case drawn with the missing rates {self.rates_by_name()} "
                         f"(seeded by the case id)")
        if not parts:
            parts.append("all modalities")
        return "validation pseudo-Dice uses " + " and ".join(parts) + "; all-zero channels count as missing"

    def changed_cases(self, other: "ModalityDropoutConfig") -> list[str]:
        """Case ids whose availability differs between the two tables (added, removed or edited)."""
        mine, theirs = self.availability or {}, other.availability or {}
        return sorted(k for k in set(mine) | set(theirs)
                      if k not in mine or k not in theirs or not np.array_equal(mine[k], theirs[k]))


def find_availability_table(dataset_name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The table to use: ``$nnUNet_dmaf_availability_table`` if set (``none`` disables), else
    ``modality_availability.csv`` in ``$nnUNet_raw/<dataset>`` or ``$nnUNet_preprocessed/<dataset>``."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_AVAILABILITY_TABLE)
    if explicit is not None:
        if explicit.strip().lower() in _DISABLED_VALUES:
            return None
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_AVAILABILITY_TABLE}={explicit!r}: no such file")
        return path
    for root_var in ("nnUNet_raw", "nnUNet_preprocessed"):
        root = environ.get(root_var)
        if root and (Path(root) / dataset_name / TABLE_FILENAME).is_file():
            return Path(root) / dataset_name / TABLE_FILENAME
    return None


def load_dropout_config(dataset_json: Mapping[str, Any], dataset_name: str,
                        environ: Mapping[str, str] | None = None) -> ModalityDropoutConfig:
    """Reads the user's configuration (environment + table file) for one dataset."""
    environ = os.environ if environ is None else environ
    names = tuple(channel_names_from_dataset_json(dataset_json))
    spec = environ.get(ENV_MISSING_RATES)
    try:
        rates = parse_missing_rates(spec if spec and spec.strip() else None, names)
    except ValueError as e:
        raise ValueError(f"{ENV_MISSING_RATES}={spec!r}: {e}") from None
    table_path = find_availability_table(dataset_name, environ)
    availability = None
    if table_path is not None:
        availability = {str(k): np.asarray(v, dtype=bool) for k, v in
                        read_availability_table(str(table_path), list(names)).items()}
        empty = [k for k, v in availability.items() if not v.any()]
        if empty:
            raise AvailabilityTableError(f"availability table {table_path}: case(s) {empty[:5]} have no modality "
                                         f"at all")
    return ModalityDropoutConfig(names, rates, availability, None if table_path is None else str(table_path),
                                 rates_source=f"${ENV_MISSING_RATES}" if spec and spec.strip() else None)


def case_rng(case_id: str) -> np.random.Generator:
    """A generator seeded with the case id (same subset for a case in every epoch and run)."""
    return np.random.default_rng(zlib.crc32(str(case_id).encode("utf-8")))


class ModalityDropoutTransform(BasicTransform):
    """Per-sample modality dropout on ``image`` [M, *S] (batchgeneratorsv2 style); put it LAST.

    Reads ``case_id`` from the data dict when a table is given (DMAFDataLoader passes it) and
    ``data_present_mask`` when :class:`ChannelPresenceTransform` ran first. Writes ``modality_mask``
    (bool [M], what the network sees) and ``available_mask`` (bool [M], what the case has), and sets
    every channel outside ``modality_mask`` to zero.

    Args:
        missing_rates: [M] drop probabilities in channel order.
        availability: optional {case_id: bool [M]}.
        fixed_per_case: draw the subset of a case from :func:`case_rng` (validation) instead of
            numpy's global RNG (training).
    """

    def __init__(self, missing_rates: Sequence[float], availability: Mapping[str, np.ndarray] | None = None,
                 fixed_per_case: bool = False):
        super().__init__()
        self.missing_rates = torch.as_tensor(np.asarray(missing_rates, dtype=np.float32))
        if self.missing_rates.ndim != 1 or bool(((self.missing_rates < 0) | (self.missing_rates > 1)).any()):
            raise ValueError(f"missing_rates must be a 1D sequence in [0, 1], got {missing_rates}")
        self.availability = None if availability is None else \
            {k: torch.as_tensor(np.asarray(v, dtype=bool)) for k, v in availability.items()}
        self.fixed_per_case = fixed_per_case

    def get_parameters(self, **data_dict) -> dict:
        num_modalities = self.missing_rates.numel()
        case_id = data_dict.get("case_id")
        if self.availability is None:
            available = torch.ones(num_modalities, dtype=torch.bool)
        else:
            if case_id is None:
                raise KeyError("ModalityDropoutTransform with an availability table needs 'case_id' in the data dict")
            if case_id not in self.availability:
                raise KeyError(f"case {case_id!r} is not in the availability table")
            available = self.availability[case_id].clone()
        data_present = data_dict.get(DATA_PRESENT_KEY)
        if data_present is not None and bool((available & data_present).any()):
            available &= data_present
        if self.fixed_per_case:
            if case_id is None:
                raise KeyError("ModalityDropoutTransform(fixed_per_case=True) needs 'case_id' in the data dict")
            present = sample_modality_mask(available, self.missing_rates, case_rng(case_id))
        else:
            present = sample_modality_mask(available, self.missing_rates)
        return {"available": available, "present": present}

    def apply(self, data_dict: dict, **params) -> dict:
        image = data_dict["image"]
        available, present = params["available"], params["present"]
        if image.shape[0] != available.numel():
            raise ValueError(f"image has {image.shape[0]} channels but {available.numel()} modalities are configured")
        if not bool(present.all()):
            image = image.clone()
            image[~present] = 0
        data_dict["image"] = image
        data_dict["modality_mask"] = present
        data_dict["available_mask"] = available
        return data_dict
