"""Zalando's Fashion-MNIST: the IDX files of the release, or of Debian's dataset-fashion-mnist."""

from __future__ import annotations

from jaxmodels.data import sources, spec

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# sha256 of the decompressed content: Debian recompressed the files, only the content is stable.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

SPEC = spec.IdxSpec(
    name="fashion_mnist",
    description="Zalando's Fashion-MNIST: 60000 train / 10000 test 28x28 greyscale, 10 classes.",
    features=spec.image_features((28, 28, 1), LABELS),
    sources=(sources.url_source(spec.idx_urls(URL)), sources.apt_source("dataset-fashion-mnist")),
    manual="the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (from {URL}), or the Debian "
    "package file dataset-fashion-mnist_*.deb",
    sha256=SHA256,
    defaults={"crop_padding": 2, "flip": True},
)
