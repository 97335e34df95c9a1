"""Packaging for spanwise.

Dataflow stages this project to its workers with ``--setup_file ./setup.py`` (as Beam's juliaset
example does), so ``install_requires`` lists only what the preprocessing workers need: the workers
already run Apache Beam, and they never import torch. The trainer's dependencies (torch,
tensorboard) come from requirements.txt, which the Docker image and bin/setup-env.sh install.
"""

from setuptools import find_packages, setup

WORKER_REQUIREMENTS = [
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "huggingface_hub==2.4.0",
    "pyarrow==25.0.1",
    "numpy==2.4.6",
    "fsspec==2026.9.0",
    "gcsfs==2026.10.1",
]

setup(
    name="spanwise",
    version="0.1.0",
    description="Fine-tune Hugging Face sequence classifiers on long documents, locally or on Google Cloud.",
    python_requires=">=3.10",
    packages=find_packages(include=["beam_pipelines*", "trainer*", "modeling*", "corpora*", "tokenization*", "schemas*", "spanwise_io*"]),
    install_requires=WORKER_REQUIREMENTS,
    extras_require={"train": ["torch==2.13.0", "tensorboard==2.21.0", "tqdm==4.70.1"]},
)
