"""Installs nnunetv2_dmaf, the DMAF-Net extension for nnU-Net v2.

Besides the packages, the wheel carries ``nnunetv2_dmaf_trainers.pth``: a one-line file that
Python's ``site`` module runs at start-up. It appends the folder with the plugin's trainer classes
to nnU-Net's own ``nnUNet_extTrainer`` search path, so ``nnUNetv2_train ... -tr nnUNetTrainerDMAF``
finds the trainer right after ``pip install .`` (see README, "How nnU-Net finds the trainer").
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH_FILE = "nnunetv2_dmaf_trainers.pth"


class BuildPyWithPth(build_py):
    """Copies the start-up ``.pth`` file to the root of the wheel (i.e. into site-packages)."""

    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, PTH_FILE), os.path.join(self.build_lib, PTH_FILE))


setup(
    name="nnunetv2_dmaf",
    version="0.1.0",
    description="DMAF-Net (dynamic modality-aware fusion) for incomplete multi-modal segmentation in nnU-Net v2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunetv2_dmaf", "nnunetv2_dmaf.*"]),
    py_modules=["nnunetv2_dmaf_register"],
    cmdclass={"build_py": BuildPyWithPth},
    install_requires=[
        "torch>=2.1.2,!=2.9.*",  # nnU-Net 2.8's own range; exact CI versions: constraints-cpu.txt
        "torchvision",  # not imported by the plugin, but nnU-Net's lookup of -tr trainers imports modules that need it
        "nnunetv2>=2.8,<2.9",
        "dynamic-network-architectures>=0.4",
        "batchgeneratorsv2>=0.3",
        "SimpleITK>=2.2",
        "nibabel",
        "scipy",
        "numpy",
        "pandas",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest>=8", "nilearn"], "benchmark": ["nilearn"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_dmaf_make_demo_dataset = nnunetv2_dmaf.demo_data:main",
            "nnUNetv2_dmaf_trainer_path = nnunetv2_dmaf_register:main",
            "nnUNetv2_dmaf_make_availability_table = nnunetv2_dmaf.training.make_availability_table:main",
            "nnUNetv2_dmaf_predict = nnunetv2_dmaf.inference.predict:main",
            "nnUNetv2_dmaf_evaluate_subsets = nnunetv2_dmaf.evaluation.subset_evaluation:main",
            "nnUNetv2_dmaf_convert_brats = nnunetv2_dmaf.dataset_conversion.convert_brats:main",
            "nnUNetv2_dmaf_brats_to_submission = nnunetv2_dmaf.dataset_conversion.convert_brats:main_to_submission",
            "nnUNetv2_dmaf_convert_myops = nnunetv2_dmaf.dataset_conversion.convert_myops2020:main",
            "nnUNetv2_dmaf_import_split = nnunetv2_dmaf.dataset_conversion.import_imbalanced_split:main",
            "nnUNetv2_dmaf_apply_protocol = nnunetv2_dmaf.dataset_conversion.published_protocol:main",
            "nnUNetv2_dmaf_myops_to_submission = nnunetv2_dmaf.dataset_conversion.convert_myops2020:main_to_submission",
            "nnUNetv2_dmaf_paper_table = nnunetv2_dmaf.evaluation.paper_table:main",
            "nnUNetv2_dmaf_plan_experiment = nnunetv2_dmaf.experiment_planning:main",
        ],
    },
)
