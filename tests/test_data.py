"""tropfx.data: IDX parsing on synthetic files, clear errors, and the real MNIST when present."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tropfx import data
from tropfx.data import ENV_VAR, FILES, IDXFormatError, MNISTNotFoundError, load_mnist, read_idx, write_idx
from tropfx.errors import TropfxError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    image_name, label_name = FILES[split]
    write_idx(root / image_name, images)
    write_idx(root / label_name, labels)


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=n, dtype=np.uint8))


def test_reads_a_synthetic_split_back_exactly(tmp_path):
    images, labels = synthetic(7)
    write_split(tmp_path, "test", images, labels)
    # The header is the canonical one: magic 0x00000803, then N, 28, 28 big-endian.
    raw = gzip.decompress((tmp_path / FILES["test"][0]).read_bytes())
    assert raw[:16] == bytes.fromhex("00000803" "00000007" "0000001c" "0000001c")
    x, y = load_mnist("test", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (7,)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)


def test_root_comes_from_the_environment_variable(tmp_path, monkeypatch):
    images, labels = synthetic(3, seed=1)
    write_split(tmp_path, "train", images, labels)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    x, y = load_mnist("train")
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_every_idx_dtype_round_trips_uncompressed(tmp_path, dtype):
    array = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", array)
    back = read_idx(tmp_path / "a.idx")
    assert back.dtype == array.dtype.newbyteorder("=") and np.array_equal(back, array)


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x00\x00", "shorter than the 4-byte IDX magic number"),
    (b"\x01\x00\x08\x01" + bytes(8), "magic number starts with 0100"),
    (b"\x00\x00\x07\x01" + bytes(8), "unknown dtype code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "header truncated"),
    (bytes.fromhex("00000803" "00000002" "0000001c" "0000001c") + bytes(100), "data truncated"),
    (bytes.fromhex("00000801" "00000002") + bytes(3), "data too long"),
])
def test_corrupt_files_raise_a_clear_error(tmp_path, raw, message):
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "download it again" in str(info.value)
    assert isinstance(info.value, TropfxError)


def test_truncated_gzip_stream_raises_a_clear_error(tmp_path):
    images, labels = synthetic(5)
    write_split(tmp_path, "test", images, labels)
    path = tmp_path / FILES["test"][0]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(IDXFormatError, match="not a readable gzip file"):
        load_mnist("test", root=tmp_path)


def test_images_and_labels_that_do_not_match_are_refused(tmp_path):
    images, labels = synthetic(5)
    write_split(tmp_path, "test", images, labels[:4])
    with pytest.raises(IDXFormatError, match="expected 5 uint8 labels"):
        load_mnist("test", root=tmp_path)


def test_missing_files_name_the_directory_the_variable_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("train", root=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and ENV_VAR in message and "download=True" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert isinstance(info.value, MNISTNotFoundError)


def test_download_fetches_checks_md5_and_moves_into_place(tmp_path, monkeypatch):
    # The real download path, offline: a file:// "mirror" after one that does not exist.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    images, labels = synthetic(4)
    write_split(mirror, "test", images, labels)
    sums = {name: hashlib.md5((mirror / name).read_bytes()).hexdigest() for name in FILES["test"]}
    monkeypatch.setattr(data, "MD5", sums)
    monkeypatch.setattr(data, "MIRRORS", ((tmp_path / "gone").as_uri() + "/", mirror.as_uri() + "/"))
    x, y = load_mnist("test", root=tmp_path / "cache", download=True)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(FILES["test"])


def test_download_with_a_wrong_checksum_leaves_no_file(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_split(mirror, "test", *synthetic(4))
    monkeypatch.setattr(data, "MD5", dict.fromkeys(FILES["test"], "0" * 32))
    monkeypatch.setattr(data, "MIRRORS", (mirror.as_uri() + "/",))
    with pytest.raises(OSError, match="does not match the published"):
        load_mnist("test", root=tmp_path / "cache", download=True)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation", root=tmp_path)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST not present at {MNIST_DIR}")
def test_real_mnist_both_splits():
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = load_mnist(split, root=MNIST_DIR)
        assert x.shape == (n, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        assert y.min() == 0 and y.max() == 9
        assert torch.bincount(y, minlength=10).min() > n // 20  # every digit well represented
        mean = x.float().mean().item() / 255
        assert 0.1 < mean < 0.15  # MNIST's pixel mean is 0.1307 (train) / 0.1325 (test)
        assert x.max() == 255 and x.min() == 0
        assert (x[:, 0, :] == 0).float().mean() > 0.99  # the border is background


def test_splits_fall_back_to_digits_only_when_asked(tmp_path, capsys):
    from tropfx.data import MNISTNotFoundError, load_mnist_splits, normalize_mnist

    with pytest.raises(MNISTNotFoundError):
        load_mnist_splits(tmp_path)
    x_train, y_train, x_test, y_test, source = load_mnist_splits(tmp_path, fallback=True)
    assert "not found" in capsys.readouterr().out and source == "sklearn digits, 28x28"
    assert x_train.shape == (1400, 28, 28) and x_train.dtype == torch.uint8 and len(y_test) == 397
    assert x_train[:, :4].max() == 0 and x_train.max() > 200  # 4-pixel margin, full range
    x = normalize_mnist(x_train)
    assert x.shape == (1400, 1, 28, 28) and x.dtype == torch.float32
