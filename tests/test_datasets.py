"""The dataset registry: embedded digits, torchvision-layout image datasets, FedProx's Synthetic."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.data import datasets
from fedsim.data.datasets import Dataset, dataset_names, load_dataset
from fedsim.errors import FedsimError

SHARED_DATA = Path("/work/shared/data")

# The usual per-dataset constants, pinned here on purpose (a change must be deliberate).
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "emnist": ((0.1751,), (0.3332,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# torchvision's layout: folder under the root, (train images, train labels), (test images, test labels)
IDX_LAYOUT = {
    "mnist": ("MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), 10),
    "fashion-mnist": ("FashionMNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                      ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), 10),
    "emnist": ("EMNIST/raw",
               ("emnist-balanced-train-images-idx3-ubyte", "emnist-balanced-train-labels-idx1-ubyte"),
               ("emnist-balanced-test-images-idx3-ubyte", "emnist-balanced-test-labels-idx1-ubyte"), 47),
}


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every file and folder under `folder`, with size and modification time."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            st = os.stat(os.path.join(dirpath, name))
            out.append((os.path.join(dirpath, name), st.st_size, st.st_mtime_ns))
    return sorted(out)


# --------------------------------------------------------------------------------------------------
# writing test files in torchvision's layouts
# --------------------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(idx_bytes(array)))
    else:
        path.write_bytes(idx_bytes(array))
    return path


def write_idx_dataset(root: Path, name: str, gz: bool, n_train: int = 12, n_test: int = 5, seed: int = 0):
    """Random images/labels in the dataset's layout; returns {split: (images uint8 (n,28,28), labels)}."""
    folder, train_files, test_files, num_classes = IDX_LAYOUT[name]
    rng = np.random.default_rng(seed)
    written = {}
    for split, files, n in (("train", train_files, n_train), ("test", test_files, n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n).astype(np.uint8)
        labels[0] = num_classes - 1  # the top label is accepted
        write_idx(root / folder / files[0], images, gz)
        write_idx(root / folder / files[1], labels, gz)
        written[split] = (images, labels)
    return written


CIFAR_LAYOUT = {  # folder, train files, test files, label key, classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def write_cifar(root: Path, name: str, n_per_file: int = 4, seed: int = 0, str_keys: bool = False):
    """Pickled batches with the real files' keys; returns {split: (data uint8 (n, 3072), labels)}."""
    folder, train_files, test_files, label_key, num_classes = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    written = {}
    for split, files in (("train", train_files), ("test", test_files)):
        datas, labelss = [], []
        for f in files:
            data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, num_classes, n_per_file)]
            entry = {b"batch_label": f"batch {f}".encode(), b"data": data,
                     b"filenames": [f"img_{i}.png".encode() for i in range(n_per_file)], label_key: labels}
            if name == "cifar100":
                entry[b"coarse_labels"] = [v // 5 for v in labels]
            if str_keys:  # as the original python-2 pickles read with encoding="latin1"
                entry = {k.decode(): v for k, v in entry.items()}
            (root / folder / f).write_bytes(pickle.dumps(entry, protocol=2))
            datas.append(data)
            labelss += labels
        written[split] = (np.concatenate(datas), np.array(labelss))
    return written


# --------------------------------------------------------------------------------------------------
# registry and the embedded digits
# --------------------------------------------------------------------------------------------------

def test_registry_names():
    assert dataset_names() == ["digits", "mnist", "fashion-mnist", "emnist", "cifar10", "cifar100",
                               "synthetic", "synthetic-iid", "shakespeare", "femnist", "celeba", "sent140",
                               "agnews"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(FedsimError) as e:
        load_dataset("imagenet")
    message = one_line_error(e)
    assert "imagenet" in message and all(n in message for n in dataset_names())


def test_digits_shapes_dtypes_normalization():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_test.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    assert ds.input_shape == (1, 8, 8) and ds.x_test.shape[1:] == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_test) == 1797 and len(ds.x_test) == len(ds.y_test)
    assert len(ds.x_train) == len(ds.y_train)
    # pixels 0..16 -> (p / 16 - 0.5) / 0.5 in [-1, 1], both ends reached
    assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0
    assert set(ds.y_test.tolist()) == set(range(10))
    assert ds.natural_train is None


def test_digits_equal_sklearns_and_every_fifth_of_a_class_is_test():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = load_dataset("digits")
    rank_in_class = np.zeros(len(bunch.target), dtype=np.int64)
    for c in range(10):
        where = np.flatnonzero(bunch.target == c)
        rank_in_class[where] = np.arange(len(where))
    is_test = rank_in_class % 5 == 4
    x = torch.from_numpy((bunch.images.astype(np.float32) / 16.0 - 0.5) / 0.5).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    assert torch.equal(ds.x_train, x[~is_test]) and torch.equal(ds.y_train, y[~is_test])
    assert torch.equal(ds.x_test, x[is_test]) and torch.equal(ds.y_test, y[is_test])
    assert (len(ds.y_train), len(ds.y_test)) == (1442, 355)  # the README's numbers
    assert ds.y_test.bincount().tolist() == [n // 5 for n in np.bincount(bunch.target)]


def test_digits_load_without_importing_sklearn():
    code = ("import sys; from fedsim.data.datasets import load_dataset; load_dataset('digits'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_generic_options_are_ignored_where_unused_and_typos_rejected():
    assert len(load_dataset("digits", seed=3, devices=7).y_train) == len(load_dataset("digits").y_train)
    with pytest.raises(FedsimError) as e:
        load_dataset("digits", sed=3)
    assert "sed" in one_line_error(e)
    with pytest.raises(FedsimError) as e:
        load_dataset("mnist", data_dir="/nonexistent", alpha=0.5)
    assert "alpha" in one_line_error(e) and "synthetic" in str(e.value)


# --------------------------------------------------------------------------------------------------
# real MNIST from the shared read-only folder
# --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no shared MNIST copy")
@pytest.mark.parametrize("download", [False, True])
def test_real_mnist_from_gz_only_folder_writes_nothing(download):
    before = snapshot(SHARED_DATA)
    ds = load_dataset("mnist", data_dir=SHARED_DATA, download=download)
    assert snapshot(SHARED_DATA) == before
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST labels
    # the MNIST constants standardize the training pixels
    assert abs(ds.x_train.mean().item()) < 1e-3 and abs(ds.x_train.std().item() - 1) < 1e-3
    assert ds.x_train.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# the MNIST family from small idx files in torchvision's layout
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "decompressed"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "emnist"])
def test_idx_datasets_round_trip(tmp_path, name, gz):
    written = write_idx_dataset(tmp_path, name, gz)
    before = snapshot(tmp_path)
    ds = load_dataset(name, data_dir=tmp_path, download=True)  # files present: nothing fetched or written
    assert snapshot(tmp_path) == before
    (mean,), (std,) = MEAN_STD[name]
    assert ds.name == name and ds.num_classes == IDX_LAYOUT[name][3]
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        images, labels = written[split]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(images), 1, 28, 28)
        expected = (images.astype(np.float64) / 255 - mean) / std
        np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=0, atol=1e-5)
        assert y.tolist() == labels.tolist()


@pytest.mark.parametrize("name, tv_class, kwargs", [("mnist", "MNIST", {}),
                                                     ("fashion-mnist", "FashionMNIST", {}),
                                                     ("emnist", "EMNIST", {"split": "balanced"})])
def test_idx_datasets_match_torchvision_orientation(tmp_path, name, tv_class, kwargs):
    """Same pixels at the same places as torchvision's own class (EMNIST too: torchvision does not
    transpose it), for .gz-only files as for decompressed ones."""
    import torchvision.datasets as tvd

    written = write_idx_dataset(tmp_path / "raw", name, gz=False)
    images = written["train"][0]
    images[0] = 0
    images[0, 3, 20] = 255  # one bright pixel off the diagonal: row 3, column 20
    write_idx_dataset(tmp_path / "gz", name, gz=True)
    write_idx(tmp_path / "raw" / IDX_LAYOUT[name][0] / IDX_LAYOUT[name][1][0], images, gz=False)
    write_idx(tmp_path / "gz" / IDX_LAYOUT[name][0] / IDX_LAYOUT[name][1][0], images, gz=True)

    tv = getattr(tvd, tv_class)(str(tmp_path / "raw"), train=True, download=False, **kwargs)
    ours_raw = load_dataset(name, data_dir=tmp_path / "raw")
    ours_gz = load_dataset(name, data_dir=tmp_path / "gz")
    (mean,), (std,) = MEAN_STD[name]
    for ours in (ours_raw, ours_gz):
        pixels = torch.round((ours.x_train[:, 0] * std + mean) * 255).to(torch.uint8)
        assert torch.equal(pixels, tv.data)
        assert torch.equal(ours.y_train, tv.targets)
        bright = (ours.x_train[0, 0] == ours.x_train[0, 0].max()).nonzero().tolist()
        assert bright == [[3, 20]]


def test_emnist_in_hand_unzipped_gzip_subfolder(tmp_path):
    written = write_idx_dataset(tmp_path / "tmp", "emnist", gz=True)
    (tmp_path / "EMNIST" / "raw").mkdir(parents=True)
    (tmp_path / "tmp" / "EMNIST" / "raw").rename(tmp_path / "EMNIST" / "raw" / "gzip")
    ds = load_dataset("emnist", data_dir=tmp_path)
    assert ds.y_test.tolist() == written["test"][1].tolist()


# --------------------------------------------------------------------------------------------------
# CIFAR from small pickled batches
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "str-keys"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, name, str_keys):
    written = write_cifar(tmp_path, name, str_keys=str_keys)
    ds = load_dataset(name, data_dir=tmp_path)
    mean, std = (np.array(v) for v in MEAN_STD[name])
    assert ds.name == name and ds.num_classes == CIFAR_LAYOUT[name][4]
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        data, labels = written[split]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(data), 3, 32, 32) and ds.input_shape == (3, 32, 32)
        assert y.tolist() == labels.tolist()  # all batches, in torchvision's order
        # a row is 1024 red, then green, then blue values, each image row-major
        i, c, h, w = 1, 2, 5, 30
        expected = (data[i, c * 1024 + h * 32 + w] / 255 - mean[c]) / std[c]
        assert x[i, c, h, w].item() == pytest.approx(expected, abs=1e-5)
        full = (data.reshape(-1, 3, 32, 32) / 255 - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(x.numpy(), full, rtol=0, atol=1e-5)


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10")

    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Sneaky()}))
    with pytest.raises(FedsimError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    message = one_line_error(e)
    assert "test_batch" in message and "getcwd" in message


# --------------------------------------------------------------------------------------------------
# missing, misplaced and damaged files
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"),
                                          ("emnist", "EMNIST/raw"), ("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python")])
def test_missing_files_one_line_with_folder_and_fix(tmp_path, name, folder):
    with pytest.raises(FedsimError) as e:
        load_dataset(name, data_dir=tmp_path)
    message = one_line_error(e)
    assert message.startswith(f"dataset {name}:")
    assert str(tmp_path / folder) in message and "--data-dir" in message and "--download" in message


def test_one_missing_file_is_named(tmp_path):
    write_idx_dataset(tmp_path, "mnist", gz=True)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FedsimError) as e:
        load_dataset("mnist", data_dir=tmp_path)
    message = one_line_error(e)
    assert "t10k-labels-idx1-ubyte" in message and "train-images" not in message


@pytest.mark.parametrize("inner", ["MNIST", "MNIST/raw"])
def test_data_dir_pointing_inside_the_layout_says_which_folder_to_pass(tmp_path, inner):
    write_idx_dataset(tmp_path, "mnist", gz=True)
    with pytest.raises(FedsimError) as e:
        load_dataset("mnist", data_dir=tmp_path / inner)
    assert f"pass --data-dir {tmp_path} " in one_line_error(e)


def test_truncated_gz_file(tmp_path):
    write_idx_dataset(tmp_path, "mnist", gz=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(FedsimError) as e:
        load_dataset("mnist", data_dir=tmp_path)
    message = one_line_error(e)
    assert str(path) in message and "truncated" in message


@pytest.mark.parametrize("damage", ["cut", "labels", "magic", "count"])
def test_damaged_idx_file(tmp_path, damage):
    written = write_idx_dataset(tmp_path, "fashion-mnist", gz=False)
    raw = tmp_path / "FashionMNIST" / "raw"
    if damage == "cut":  # decompressed file cut short: the header promises more than the file holds
        path = raw / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "labels":  # a label out of range
        path = raw / "train-labels-idx1-ubyte"
        labels = written["train"][1].copy()
        labels[3] = 10
        write_idx(path, labels, gz=False)
    elif damage == "magic":  # not an idx file at all
        path = raw / "train-images-idx3-ubyte"
        path.write_bytes(b"<html>404 Not Found</html>")
    else:  # 11 labels for 12 images
        path = raw / "train-labels-idx1-ubyte"
        write_idx(path, written["train"][1][:-1], gz=False)
    with pytest.raises(FedsimError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = one_line_error(e)
    assert message.startswith("dataset fashion-mnist:") and str(path) in message


def test_truncated_cifar_batch(tmp_path):
    write_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(FedsimError) as e:
        load_dataset("cifar100", data_dir=tmp_path)
    message = one_line_error(e)
    assert str(path) in message and "truncated" in message


# --------------------------------------------------------------------------------------------------
# download=True goes through torchvision's own classes
# --------------------------------------------------------------------------------------------------

def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class Offline:
        def __init__(self, root, train=True, download=False, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
                               "<urlopen error [Errno -3] Temporary failure in name resolution>\n")

    monkeypatch.setattr(tvd, "MNIST", Offline)
    with pytest.raises(FedsimError) as e:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    message = one_line_error(e)
    assert "download" in message and "name resolution" in message and str(tmp_path) in message


def test_download_uses_torchvision_class_then_reads_its_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeEMNIST:  # stands in for the network: writes what torchvision's download leaves behind
        def __init__(self, root, train=True, download=False, split=None, **kwargs):
            calls.append((root, download, split))
            write_idx_dataset(Path(root), "emnist", gz=False, seed=5)

    monkeypatch.setattr(tvd, "EMNIST", FakeEMNIST)
    ds = load_dataset("emnist", data_dir=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, "balanced")]
    assert ds.y_train.tolist() == write_idx_dataset(tmp_path / "again", "emnist", gz=False, seed=5)[
        "train"][1].tolist()
    with pytest.raises(FedsimError):  # without download=True, torchvision is not asked
        load_dataset("emnist", data_dir=tmp_path / "empty")
    assert len(calls) == 1


def test_layout_names_match_torchvision(tmp_path):
    """The folder and file names read here are the ones torchvision's classes use."""
    import torchvision.datasets as tvd

    specs = datasets._IMAGE_SPECS
    for name in ("mnist", "fashion-mnist"):
        cls = getattr(tvd, specs[name].tv_class)
        assert [f.removesuffix(".gz") for f, _ in cls.resources] == list(specs[name].files)
        obj = cls.__new__(cls)
        obj.root = str(tmp_path)
        assert Path(obj.raw_folder) == tmp_path / specs[name].folder
    emnist = tvd.EMNIST.__new__(tvd.EMNIST)
    emnist.root, emnist.split = str(tmp_path), "balanced"
    files = []
    for emnist.train in (True, False):
        files += [Path(emnist.images_file), Path(emnist.labels_file)]
    assert files == [tmp_path / specs["emnist"].folder / f for f in specs["emnist"].files]
    for name in ("cifar10", "cifar100"):
        cls = getattr(tvd, specs[name].tv_class)
        assert cls.base_folder == specs[name].folder
        assert [f for f, _ in cls.train_list] == list(specs[name].train)
        assert [f for f, _ in cls.test_list] == list(specs[name].test)


# --------------------------------------------------------------------------------------------------
# FedProx's Synthetic(alpha, beta)
# --------------------------------------------------------------------------------------------------

def device_parts(ds: Dataset, k: int):
    return ds.x_train[ds.natural_train[k]].numpy(), ds.y_train[ds.natural_train[k]].numpy()


def test_synthetic_defaults_and_natural_split():
    ds = load_dataset("synthetic")
    assert ds.name == "synthetic" and ds.num_classes == 10
    assert ds.info["alpha"] == 1.0 and ds.info["beta"] == 1.0 and ds.info["devices"] == 30
    assert ds.info["seed"] == 0 and ds.info["iid"] is False
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (60,) and ds.x_test.shape[1] == 60
    assert len(ds.natural_train) == len(ds.natural_test) == 30
    for indices, n in ((ds.natural_train, len(ds.y_train)), (ds.natural_test, len(ds.y_test))):
        every = np.concatenate(indices)
        assert len(every) == n and np.array_equal(np.sort(every), np.arange(n))  # each sample exactly once
    sizes = ds.info["samples_per_device"]
    assert len(sizes) == 30 and min(sizes) >= 50
    for k, n in enumerate(sizes):
        assert len(ds.natural_train[k]) == int(0.9 * n) and len(ds.natural_test[k]) == n - int(0.9 * n)
    for y in (ds.y_train, ds.y_test):
        assert 0 <= y.min() and y.max() <= 9
    assert len(set(ds.y_train.tolist())) == 10


def test_synthetic_is_determined_by_seed():
    a, b, c = load_dataset("synthetic", seed=1), load_dataset("synthetic", seed=1), load_dataset(
        "synthetic", seed=2)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert all(np.array_equal(p, q) for p, q in zip(a.natural_train, b.natural_train, strict=True))
    assert a.info["seed"] == 1 and c.info["seed"] == 2
    assert a.info["samples_per_device"] != c.info["samples_per_device"] or not torch.equal(a.x_train,
                                                                                         c.x_train)


def test_synthetic_feature_covariance_is_fedprox_sigma():
    """Within a device, x - v_k ~ N(0, diag((j+1)^-1.2))."""
    ds = load_dataset("synthetic", seed=4)
    centered = np.concatenate([x - x.mean(0) for x, _ in (device_parts(ds, k) for k in range(30))])
    var = centered.var(0)
    sigma = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(var, sigma, rtol=0.15)


def test_synthetic_iid_vs_non_iid_device_means():
    non_iid = load_dataset("synthetic(0.5,0.5)", seed=0)
    iid = load_dataset("synthetic-iid", seed=0)
    assert iid.name == "synthetic-iid" and iid.info["iid"] is True
    assert iid.info["alpha"] == 0 and iid.info["beta"] == 0
    means_iid = np.array([device_parts(iid, k)[0].mean() for k in range(30)])
    means_non = np.array([device_parts(non_iid, k)[0].mean() for k in range(30)])
    assert np.abs(means_iid).max() < 0.15  # x ~ N(0, Sigma) on every device
    assert means_non.std() > 0.3  # v_k ~ N(B_k, 1), B_k ~ N(0, 0.5): devices differ
    # the same input law and one shared (W, b): large devices have similar label histograms
    big = np.argsort(iid.info["samples_per_device"])[-2:]
    h = [np.bincount(device_parts(iid, k)[1], minlength=10) / len(iid.natural_train[k]) for k in big]
    assert np.abs(h[0] - h[1]).sum() / 2 < 0.15


def test_synthetic_names_and_options():
    ds = load_dataset("Synthetic(0.5, 0.25)", devices=5, seed=9)
    assert ds.name == "synthetic(0.5,0.25)" and ds.info["alpha"] == 0.5 and ds.info["beta"] == 0.25
    assert ds.info["devices"] == 5 and len(ds.natural_train) == 5 and ds.info["seed"] == 9
    same = load_dataset("synthetic", alpha=0.5, beta=0.25, devices=5, seed=9)
    assert torch.equal(same.x_train, ds.x_train) and same.name == ds.name
    assert not torch.equal(load_dataset("synthetic(0,0)", devices=5, seed=9).y_train, ds.y_train)
    for bad in ("synthetic(a,b)", "synthetic(1)", "synthetic(1,2,3)", "synthetic(-1,1)", "synthetic(nan,1)"):
        with pytest.raises(FedsimError) as e:
            load_dataset(bad)
        one_line_error(e)
    with pytest.raises(FedsimError) as e:
        load_dataset("synthetic(0.5,0.5)", alpha=1.0)
    assert "alpha" in one_line_error(e)
    with pytest.raises(FedsimError):
        load_dataset("synthetic", devices=0)
    with pytest.raises(FedsimError):
        load_dataset("synthetic-iid", alpha=0.5)
