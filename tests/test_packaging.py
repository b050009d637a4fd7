"""What ``pip install .`` puts into site-packages (run against the installed distribution)."""
from __future__ import annotations

import importlib.metadata as metadata
import re
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def installed() -> metadata.Distribution:
    """The distribution pip installed (not a build's egg-info in the checkout, which is on sys.path)."""
    found = [d for d in metadata.distributions(path=[sysconfig.get_paths()["purelib"]])
             if d.metadata["Name"] == "nnunetv2_dmaf"]
    assert len(found) == 1, "nnunetv2_dmaf is not installed in this Python's site-packages"
    return found[0]


def test_conversion_code_installs_under_the_plugin_namespace_only():
    files = [str(f) for f in installed().files]
    assert any(f.startswith("nnunetv2_dmaf/dataset_conversion/convert_brats.py") for f in files)
    top_level = {f.split("/")[0] for f in files} - {"..", "__pycache__"}  # console scripts, byte code
    top_level = {t for t in top_level if not t.endswith((".dist-info", ".pth"))}
    assert top_level == {"nnunetv2_dmaf", "nnunetv2_dmaf_register.py"}, top_level


def test_console_scripts_point_to_importable_functions():
    scripts = [e for e in installed().entry_points if e.group == "console_scripts"]
    names = {e.name for e in scripts}
    assert {"nnUNetv2_dmaf_convert_brats", "nnUNetv2_dmaf_apply_protocol", "nnUNetv2_dmaf_plan_experiment"} <= names
    for entry in scripts:
        assert callable(entry.load()), entry.name


def test_requirements_are_ranges_and_exact_versions_live_in_the_constraints_file():
    requirements = installed().requires
    torch = next(r for r in requirements if re.match(r"torch\b", r) and not r.startswith("torchvision"))
    assert ">=2.1.2" in torch and "==" not in torch
    assert not any("==" in r.split(";")[0] for r in requirements)  # (markers say extra == "test")
    constraints = (REPO / "constraints-cpu.txt").read_text()
    assert re.search(r"^torch==", constraints, re.M)
    assert "constraints-cpu.txt" in (REPO / "README.md").read_text()
