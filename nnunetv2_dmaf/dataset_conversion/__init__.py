"""Conversion of public multi-modal datasets (BraTS 2018/2020/2021, MyoPS 2020) into nnU-Net v2 raw
format, and import of published imbalanced-missing-modality split tables.

Command-line entry points: ``convert_brats.main``, ``convert_brats.main_to_submission``,
``convert_myops2020.main`` and ``import_imbalanced_split.main``.
"""
