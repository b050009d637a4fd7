"""Makes nnU-Net find the plugin's trainers through its own ``nnUNet_extTrainer`` mechanism.

nnU-Net 2.8 looks up ``-tr NAME`` in its own trainer folder and then in every folder listed in the
environment variable ``nnUNet_extTrainer`` (``os.pathsep``-separated). ``register()`` appends
``nnunetv2_dmaf/nnunet_trainers`` to that variable; the installed ``nnunetv2_dmaf_trainers.pth``
calls it at interpreter start-up. This module must stay import-light (no torch, no nnU-Net): it
runs in every Python process of the environment.
"""
import importlib.util
import os
import sys

ENV_VAR = "nnUNet_extTrainer"


def trainer_folder() -> str | None:
    """Folder holding the trainer modules nnU-Net should search, or None if the plugin is absent."""
    spec = importlib.util.find_spec("nnunetv2_dmaf")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "nnunet_trainers")


def register() -> None:
    """Appends the trainer folder to ``nnUNet_extTrainer`` unless it is already listed."""
    if os.environ.get("NNUNETV2_DMAF_NO_AUTOREGISTER"):
        return
    try:
        folder = trainer_folder()
    except Exception:  # never break interpreter start-up
        return
    if folder is None or not os.path.isdir(folder):
        return
    current = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if os.path.abspath(folder) not in [os.path.abspath(p) for p in current]:
        os.environ[ENV_VAR] = os.pathsep.join(current + [folder])


def main() -> None:
    """Console script ``nnUNetv2_dmaf_trainer_path``: print the folder for ``nnUNet_extTrainer``."""
    folder = trainer_folder()
    if folder is None:
        sys.exit("nnunetv2_dmaf is not installed in this Python environment")
    print(folder)
