"""nnU-Net's raw image file naming: one file per channel, ``CASE_XXXX<file_ending>``, XXXX being
the 4-digit channel index of dataset.json's ``channel_names`` (``BraTS_001_0002.nii.gz`` is channel
2 of case ``BraTS_001``). Every writer and reader of channel files in this package names them here."""
from __future__ import annotations

import re
from pathlib import Path

#: a channel file's name without its file ending: the case identifier and the channel index
CASE_FILE_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_file_name(case_id: str, channel: int, file_ending: str) -> str:
    """The file name of channel ``channel`` of case ``case_id``: ``f"{case_id}_{channel:04d}{file_ending}"``."""
    return f"{case_id}_{channel:04d}{file_ending}"


def cases_in_folder(folder: Path, file_ending: str) -> list[str]:
    """The cases of an nnU-Net images folder (those with a channel-0 file), sorted."""
    suffix = channel_file_name("", 0, file_ending)
    return sorted(p.name[:-len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))
