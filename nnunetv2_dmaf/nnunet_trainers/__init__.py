"""Folder that nnU-Net searches for ``-tr`` names (listed in ``nnUNet_extTrainer``, see
nnunetv2_dmaf_register). nnU-Net imports the modules here as top-level modules, so they only
re-export the trainers from the package."""
