"""MNIST from the four canonical gzip-compressed IDX files, read with numpy.

>>> images, labels = load_mnist("train")        # uint8 (60000, 28, 28), int64 (60000,)

The directory is the ``root`` argument, else ``$TROPFX_MNIST_DIR``, else ``~/.cache/tropfx/mnist``.
``download=True`` fetches missing files from a public mirror with ``urllib`` and checks their MD5.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype code, the
number of dimensions ``d``; then ``d`` big-endian uint32 sizes; then the data, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from tropfx.errors import TropfxError

__all__ = ["ENV_VAR", "MNIST_MEAN", "MNIST_STD", "IDXFormatError", "MNISTNotFoundError",
           "digits_as_mnist", "download_mnist", "load_mnist", "load_mnist_splits", "mnist_root",
           "normalize_mnist", "read_idx", "write_idx"]

ENV_VAR = "TROPFX_MNIST_DIR"
DEFAULT_ROOT = Path("~/.cache/tropfx/mnist")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # MNIST training-set pixel statistics

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5 of the files as the mirrors serve them (the same sums torchvision checks).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# IDX dtype codes; the data is big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXFormatError(TropfxError, ValueError):
    """A file is not a valid IDX file: bad magic number, unknown dtype, truncated or too long."""


class MNISTNotFoundError(TropfxError, FileNotFoundError):
    """The MNIST files are not in the directory searched."""


def mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The directory to read from: ``root``, else ``$TROPFX_MNIST_DIR``, else ``~/.cache/tropfx/mnist``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed when the name ends in ``.gz``), native byte order."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a truncated or damaged gzip stream
        raise IDXFormatError(f"{path}: not a readable gzip file ({exc}); delete it and download "
                             "it again") from exc
    return _parse_idx(raw, str(path))


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    def fail(what: str) -> IDXFormatError:
        return IDXFormatError(f"{name}: {what}; the file is corrupt or not an IDX file, "
                              "delete it and download it again")

    if len(raw) < 4:
        raise fail(f"{len(raw)} bytes, shorter than the 4-byte IDX magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise fail(f"magic number starts with {raw[:2].hex()}, expected 0000")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise fail(f"unknown dtype code 0x{code:02X}, expected one of {known}")
    if ndim == 0:
        raise fail("0 dimensions")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise fail(f"header truncated: {ndim} dimensions need {offset} header bytes, found {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - offset
    if found != expected:
        state = "truncated" if found < expected else "too long"
        raise fail(f"data {state}: shape {shape} of {dtype.name} needs {expected} bytes, found {found}")
    data = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a native, writable copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise IDXFormatError(f"IDX cannot store {array.dtype}; use one of "
                             f"{sorted(d.name for d in codes)}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(IDX_DTYPES[codes[native]]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def load_mnist(split: str = "train", root: str | os.PathLike | None = None,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` ("train": 60,000, "test": 10,000) as uint8 images (N, 28, 28), int64 labels (N,).

    Args:
        split: "train" or "test".
        root: the directory holding the four ``*-ubyte.gz`` files; default ``$TROPFX_MNIST_DIR``,
            else ``~/.cache/tropfx/mnist``.
        download: fetch missing files into ``root`` from a public mirror (needs network access).

    Raises:
        MNISTNotFoundError: (a ``FileNotFoundError``) files missing and ``download`` is False.
        IDXFormatError: a file is corrupt, truncated, or images and labels do not match.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    directory = mnist_root(root)
    paths = [directory / name for name in FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing and download:
        download_mnist(directory, names=missing)
    elif missing:
        raise MNISTNotFoundError(
            f"MNIST {split} files not found in {directory} (missing: {', '.join(missing)}). "
            f"Put the four canonical *-ubyte.gz files there, point ${ENV_VAR} or root= at the "
            "directory that holds them, or pass download=True to fetch them"
        )
    images, labels = (read_idx(p) for p in paths)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXFormatError(f"{paths[0]}: expected uint8 images of shape (N, 28, 28), "
                             f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise IDXFormatError(f"{paths[1]}: expected {len(images)} uint8 labels to match the images, "
                             f"got {labels.dtype} {labels.shape}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_mnist_splits(root: str | os.PathLike | None = None, *, fallback: bool = False,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``(x_train, y_train, x_test, y_test, source)``: both MNIST splits (uint8 images, int64
    labels) and a description of where they came from. With ``fallback``, missing MNIST files
    are reported on stdout and :func:`digits_as_mnist` stands in (examples' and benchmarks'
    ``--smoke`` runs on machines without MNIST); without it, :class:`MNISTNotFoundError`."""
    try:
        x_train, y_train = load_mnist("train", root=root)
        x_test, y_test = load_mnist("test", root=root)
    except FileNotFoundError as exc:
        if not fallback:
            raise
        print(f"{exc}\nsmoke run on scikit-learn's 8x8 digits upscaled to 28x28 instead")
        return (*digits_as_mnist(), "sklearn digits, 28x28")
    return x_train, y_train, x_test, y_test, f"MNIST from {root or mnist_root()}"


def digits_as_mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits in MNIST's layout: each digit upscaled to 20x20 and
    centred in 28x28 with a 4-pixel margin, uint8 0..255; 1,400 training and 397 test images."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255 / 16)
    images = F.interpolate(images, size=(20, 20), mode="bilinear")
    images = F.pad(images, (4, 4, 4, 4)).squeeze(1).round().to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images[:1400], labels[:1400], images[1400:], labels[1400:]


def normalize_mnist(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) standardized with MNIST's mean and std."""
    return ((images.float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def download_mnist(root: str | os.PathLike | None = None, names: list[str] | None = None,
                   mirrors: tuple[str, ...] | None = None, timeout: float = 60.0) -> Path:
    """Download the MNIST files ``names`` (default: all four) into ``root``; return the directory.

    Each file is tried on every mirror (base URLs, default :data:`MIRRORS`) in turn, checked
    against its published MD5, and only then moved into place, so an interrupted download never
    leaves a partial file under the real name.
    """
    directory = mnist_root(root)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else list(MD5):
        errors = []
        for mirror in mirrors or MIRRORS:
            url = mirror + name
            try:
                _fetch(url, directory / name, MD5[name], timeout)
                break
            except (OSError, http.client.HTTPException, IDXFormatError) as exc:  # URLError is an OSError
                errors.append(f"{url}: {exc}")
        else:
            raise OSError(f"could not download {name} into {directory} (copy the files there by "
                          f"hand, or point ${ENV_VAR} at a copy):\n  " + "\n  ".join(errors))
    return directory


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    digest = hashlib.md5()  # noqa: S324 - a checksum published by the mirrors, not security
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != md5:
            raise IDXFormatError(f"MD5 {digest.hexdigest()} does not match the published {md5}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
