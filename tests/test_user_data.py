"""The user's own data and models: tensors, torch Datasets, image folders, .npz files, LEAF-style Shakespeare,
nn.Modules, factories and "module:attr" paths."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fedsim import build_partition
from fedsim.data import shakespeare, user
from fedsim.data.datasets import Dataset, load_dataset
from fedsim.errors import FedsimError
from fedsim.models import find_head, resolve_model

SHARED_SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def arrays(n_train=12, n_test=6, shape=(3,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_train, *shape)), np.arange(n_train) % classes,
            rng.normal(size=(n_test, *shape)), np.arange(n_test) % classes)


# --------------------------------------------------------------------------------------------------
# from_tensors, the natural split, the fingerprint
# --------------------------------------------------------------------------------------------------

def test_from_tensors_converts_dtypes_and_has_no_natural_split_without_ids():
    ds = Dataset.from_tensors(*arrays(), name="mine")
    assert (ds.x_train.dtype, ds.y_train.dtype, ds.x_test.dtype, ds.y_test.dtype) == \
        (torch.float32, torch.int64, torch.float32, torch.int64)
    assert ds.input_shape == (3,) and ds.num_classes == 3 and ds.natural_train is None and ds.name == "mine"
    assert Dataset.from_tensors(*arrays(), name="mine", num_classes=5).num_classes == 5


def test_client_ids_give_the_natural_split_in_sorted_id_order():
    x, y, xt, yt = arrays(n_train=7, n_test=4)
    ds = Dataset.from_tensors(x, y, xt, yt, name="mine", client_train=["bob", "al", "bob", "cy", "al", "al", "cy"],
                              client_test=["cy", "al", "al", "cy"])
    assert ds.info["client_ids"] == ["al", "bob", "cy"]
    assert [ix.tolist() for ix in ds.natural_train] == [[1, 4, 5], [0, 2], [3, 6]]
    assert [ix.tolist() for ix in ds.natural_test] == [[1, 2], [], [0, 3]]
    part = build_partition(ds, "natural")
    assert part.num_clients == 3 and part.train_indices(0).tolist() == [1, 4, 5]
    assert sorted(part.test_indices(2).tolist()) == [0, 3]


def test_integer_client_ids_may_be_any_integers():
    x, y, xt, yt = arrays(n_train=5)
    ds = Dataset.from_tensors(x, y, xt, yt, name="mine", client_train=torch.tensor([70, -3, 70, 12, -3]))
    assert ds.info["client_ids"] == [-3, 12, 70]
    assert [ix.tolist() for ix in ds.natural_train] == [[1, 4], [3], [0, 2]]


def test_train_ids_only_share_the_test_split_out_by_label():
    """No client_test: the natural partition's test slices follow each client's train labels, as for the other
    schemes, and every test sample goes to one client."""
    x, y, xt, yt = arrays(n_train=12, n_test=9)
    ds = Dataset.from_tensors(x, y, xt, yt, name="mine", client_train=np.arange(12) % 2)
    assert ds.natural_test is None
    part = build_partition(ds, "natural")
    assert part.num_clients == 2
    held = np.concatenate([part.test_indices(c) for c in range(2)])
    assert sorted(held.tolist()) == list(range(9))


@pytest.mark.parametrize("change, needle", [
    (dict(y_train=np.arange(11) % 3), "y_train"),
    (dict(y_train=np.full(12, 0.5)), "integer"),
    (dict(y_test=np.array([0, 1, 2, 3, 0, 1]), num_classes=3), "labels span 0..3, expected 0..2"),
    (dict(y_test=np.array([0, -1, 2, 0, 1, 2])), "labels span -1..2"),
    (dict(x_test=np.zeros((6, 4))), "shape"),
    (dict(x_train=np.zeros(12)), "x_train"),
    (dict(x_test=np.zeros((0, 3)), y_test=np.zeros(0, dtype=np.int64)), "test split is empty"),
    (dict(client_train=np.arange(5)), "one client id per sample"),
    (dict(client_train=np.full(12, 0.5)), "integers or strings"),
    (dict(client_test=np.arange(6)), "without client_train"),
    (dict(client_train=np.arange(12) % 2, client_test=np.array([0, 1, 5, 0, 1, 0])), "client_test has ids"),
    (dict(client_train=np.arange(12) % 2, client_test=np.array(list("aaaaaa"))), "same kind"),
    (dict(num_classes=0), "num_classes"),
    (dict(x_train="nonsense"), "x_train"),
])
def test_from_tensors_problems_are_one_line(change, needle):
    x, y, xt, yt = arrays()
    kwargs = {**dict(x_train=x, y_train=y, x_test=xt, y_test=yt, name="mine"), **change}
    with pytest.raises(FedsimError) as e:
        Dataset.from_tensors(**kwargs)
    assert needle in one_line(e)


def test_fingerprint_names_the_content_and_is_computed_once(monkeypatch):
    a = Dataset.from_tensors(*arrays(), name="a")
    b = Dataset.from_tensors(*arrays(), name="b")
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    x, y, xt, yt = arrays()
    x[0, 0] += 1e-3
    assert Dataset.from_tensors(x, y, xt, yt, name="a").fingerprint() != a.fingerprint()
    natural = Dataset.from_tensors(*arrays(), name="a", client_train=np.arange(12) % 2)
    assert natural.fingerprint() != a.fingerprint()
    monkeypatch.setattr(user, "fingerprint", lambda ds: pytest.fail("computed twice"))
    a.fingerprint()


# --------------------------------------------------------------------------------------------------
# from_torch
# --------------------------------------------------------------------------------------------------

def test_from_torch_reads_a_tensor_dataset_in_order():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 1, 4, 4, generator=g), torch.randint(0, 5, (23,), generator=g)
    xt, yt = torch.randn(7, 1, 4, 4, generator=g), torch.arange(7) % 5
    ds = Dataset.from_torch(TensorDataset(x, y), TensorDataset(xt, yt), name="td", batch_size=4)
    assert torch.equal(ds.x_train, x) and torch.equal(ds.y_train, y) and torch.equal(ds.x_test, xt)
    assert ds.input_shape == (1, 4, 4) and ds.num_classes == int(max(y.max(), yt.max())) + 1


class Listed(torch.utils.data.Dataset):
    """A map-style dataset of (numpy input, int label), with torchvision's `classes`."""

    classes = ["a", "b", "c", "d"]

    def __init__(self, n, pil=False):
        self.n, self.pil = n, pil

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.pil:
            return Image.new("L", (4, 4)), 0
        return np.full(3, i, dtype=np.float64), i % 2


def test_from_torch_takes_arrays_and_the_classes_attribute():
    ds = Dataset.from_torch(Listed(5), Listed(3), name="listed")
    assert ds.num_classes == 4 and ds.x_train[:, 0].tolist() == [0, 1, 2, 3, 4] and ds.y_test.tolist() == [0, 1, 0]


def test_from_torch_refuses_pil_images_and_what_does_not_fit(monkeypatch):
    with pytest.raises(FedsimError) as e:
        Dataset.from_torch(Listed(5, pil=True), Listed(3), name="pil")
    assert "ToTensor" in one_line(e)
    monkeypatch.setattr(user, "available_memory", lambda: 50)  # 8 samples of 3 float32 need 96 bytes
    with pytest.raises(FedsimError) as e:
        Dataset.from_torch(Listed(5), Listed(3), name="big")
    assert "GiB" in one_line(e) and "available" in str(e.value)


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------

def write_images(root: Path, counts: dict[str, int], size=(6, 5), colour_every=3, seed=0) -> None:
    """counts: 'class' or 'split/class' -> how many PNGs; every `colour_every`-th image is RGB, the rest gray."""
    rng = np.random.default_rng(seed)
    for where, count in counts.items():
        folder = root / where
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rgb = colour_every and i % colour_every == 0
            pixels = rng.integers(0, 256, (size[1], size[0], 3) if rgb else (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(pixels, "RGB" if rgb else "L").save(folder / f"img{i}.png")


def test_image_folder_with_test_split_uneven_classes_and_a_gray_rgb_mix(tmp_path):
    write_images(tmp_path, {"train/cat": 7, "train/dog": 3, "train/eel": 1, "test/cat": 2, "test/dog": 1,
                            "test/fox": 1})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), data_dir=tmp_path / "data")
    assert ds.info["classes"] == ["cat", "dog", "eel", "fox"] and ds.num_classes == 4
    assert ds.x_train.shape == (11, 3, 5, 6) and ds.info["mode"] == "RGB" and ds.x_train.dtype == torch.float32
    assert ds.y_train.tolist() == [0] * 7 + [1] * 3 + [2] and ds.y_test.tolist() == [0, 0, 1, 3]
    # a gray image is its value repeated over the three channels
    gray = Image.open(tmp_path / "train" / "cat" / "img1.png")
    mean, std = torch.tensor(ds.info["mean"]), torch.tensor(ds.info["std"])
    pixels = ds.x_train[1] * std[:, None, None] + mean[:, None, None]
    assert torch.allclose(pixels * 255, torch.from_numpy(np.array(gray)).float().expand(3, -1, -1), atol=1e-3)
    # normalized with the train split's per-channel statistics
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(ds.x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("mode, low, high", [("unit", 0, 1), ("symmetric", -1, 1)])
def test_an_all_gray_folder_is_one_channel_and_takes_the_normalize_modes(tmp_path, mode, low, high):
    write_images(tmp_path, {"a": 4, "b": 4}, colour_every=0)
    ds = load_dataset(str(tmp_path), test_fraction=0.25, normalize=mode)
    assert ds.x_train.shape[1] == 1 and ds.info["mode"] == "L" and ds.info["normalize"] == mode
    assert low <= float(ds.x_train.min()) < low + 0.05 and high - 0.05 < float(ds.x_train.max()) <= high
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path), normalize="zscore")
    assert "standard, symmetric, unit" in one_line(e)


def test_class_folders_only_take_a_stratified_seeded_test_fraction(tmp_path):
    write_images(tmp_path, {"a": 10, "b": 5, "c": 20})
    ds = load_dataset(str(tmp_path), test_fraction=0.2)
    assert np.bincount(ds.y_test.numpy()).tolist() == [2, 1, 4] and len(ds.y_train) == 28
    assert ds.info["layout"] == "classes" and ds.info["test_fraction"] == 0.2
    again = load_dataset(str(tmp_path), test_fraction=0.2)
    other = load_dataset(str(tmp_path), test_fraction=0.2, seed=1)
    assert torch.equal(again.x_test, ds.x_test) and not torch.equal(other.x_test, ds.x_test)
    assert len(load_dataset(str(tmp_path)).y_test) == 7  # the default fraction, 0.2


def test_the_decoded_images_are_cached_and_a_changed_file_decodes_again(tmp_path, monkeypatch):
    from fedsim.data import folder

    write_images(tmp_path, {"train/a": 3, "train/b": 2, "test/a": 1, "test/b": 1})
    first = load_dataset(str(tmp_path))
    assert not first.info["cache_hit"] and Path(first.info["cache"]).parent == tmp_path / ".fedsim-cache"
    monkeypatch.setattr(folder, "_decode", lambda *a: pytest.fail("decoded although cached"))
    second = load_dataset(str(tmp_path))
    assert second.info["cache_hit"] and torch.equal(second.x_train, first.x_train)
    monkeypatch.undo()
    write_images(tmp_path, {"train/a": 1}, seed=5)  # img0 rewritten: new content, size or mtime
    os.utime(tmp_path / "train" / "a" / "img0.png", ns=(1, 1))
    third = load_dataset(str(tmp_path))
    assert not third.info["cache_hit"] and not torch.equal(third.x_train, first.x_train)
    assert list((tmp_path / ".fedsim-cache").glob("*.pt")) == [Path(third.info["cache"])]  # the stale one is gone


def test_the_cache_goes_under_the_data_dir_when_the_folder_cannot_hold_it(tmp_path):
    images = tmp_path / "images"
    write_images(images, {"a": 5, "b": 5})
    (images / ".fedsim-cache").write_text("a file where the cache folder would go")
    first = load_dataset(str(images), data_dir=tmp_path / "data")
    assert Path(first.info["cache"]).parent == tmp_path / "data" / ".fedsim-cache"
    assert load_dataset(str(images), data_dir=tmp_path / "data").info["cache_hit"]


def test_image_size_resizes_images_of_different_sizes(tmp_path):
    write_images(tmp_path, {"a": 2}, size=(6, 5))
    write_images(tmp_path, {"b": 3}, size=(9, 7))
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path))
    assert "--image-size" in one_line(e) and "differ in size" in str(e.value)
    assert load_dataset(str(tmp_path), image_size=(4, 8)).input_shape == (3, 4, 8)
    assert load_dataset(str(tmp_path), image_size=4).input_shape == (3, 4, 4)


def test_image_folder_problems_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "empty"))
    assert "is empty" in one_line(e)

    write_images(tmp_path / "hollow", {"a": 2})
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "hollow"))
    assert "hollow/b holds no images" in one_line(e)

    write_images(tmp_path / "broken", {"a": 3, "b": 3})
    (tmp_path / "broken" / "b" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "broken"))
    assert "bad.png" in one_line(e)

    write_images(tmp_path / "half", {"train/a": 2})
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "half"))
    assert "no test/" in one_line(e)

    write_images(tmp_path / "split", {"train/a": 2, "test/a": 1})
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "split"), test_fraction=0.3)
    assert "drop --test-fraction" in one_line(e)
    for bad in (0, 1.5):
        with pytest.raises(FedsimError) as e:
            load_dataset(str(tmp_path / "hollow" / ".."  / "broken"), test_fraction=bad)
        assert "--test-fraction" in one_line(e)
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "split"), image_size=(0, 3))
    assert "image_size" in one_line(e)


def test_folder_options_belong_to_folders_and_names_win_over_folders(tmp_path, monkeypatch):
    with pytest.raises(FedsimError) as e:
        load_dataset("digits", image_size=8)
    assert "folder of images" in one_line(e)
    write_images(tmp_path / "digits", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    assert load_dataset("digits").num_classes == 10 and "folder" not in load_dataset("digits").info
    assert load_dataset("./digits", test_fraction=0.5).info["classes"] == ["a", "b"]


# --------------------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------------------

def test_npz_with_and_without_client_ids(tmp_path):
    x, y, xt, yt = arrays(n_train=6, n_test=3)
    np.savez(tmp_path / "plain.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    ds = load_dataset(str(tmp_path / "plain.npz"))
    assert ds.name == "plain" and ds.natural_train is None and torch.allclose(ds.x_train, torch.from_numpy(x).float())
    np.savez(tmp_path / "fed.npz", x_train=x, y_train=y, x_test=xt, y_test=yt, client_train=np.array(list("abcabc")),
             client_test=np.array(list("cca")), num_classes=np.int64(7))
    ds = load_dataset(str(tmp_path / "fed.npz"))
    assert ds.num_classes == 7 and ds.info["client_ids"] == ["a", "b", "c"]
    assert [ix.tolist() for ix in ds.natural_train] == [[0, 3], [1, 4], [2, 5]]
    assert [ix.tolist() for ix in ds.natural_test] == [[2], [], [0, 1]]
    assert build_partition(ds, "natural").num_clients == 3


def test_npz_problems_are_one_line(tmp_path):
    x, y, xt, yt = arrays()
    np.savez(tmp_path / "short.npz", x_train=x, y_train=y)
    np.savez(tmp_path / "extra.npz", x_train=x, y_train=y, x_test=xt, y_test=yt, weights=y)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    for name, needle in (("short", "lacks x_test, y_test"), ("extra", "weights"), ("junk", "cannot read"),
                         ("one", "single array"), ("missing", "does not exist")):
        with pytest.raises(FedsimError) as e:
            load_dataset(str(tmp_path / f"{name}.npz"))
        assert needle in one_line(e), name
    with pytest.raises(FedsimError) as e:
        load_dataset(str(tmp_path / "extra.npz"), image_size=4)
    assert "folder of images" in one_line(e)


# --------------------------------------------------------------------------------------------------
# LEAF-style Shakespeare
# --------------------------------------------------------------------------------------------------

PLAY = """ALICE:
To be or not to be, that is the question:
whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune.

BOB:
Short.

ALICE:
Or to take arms against a sea of troubles, and by opposing end them? To die: to sleep; no more;
and by a sleep to say we end the heart-ache and the thousand natural shocks that flesh is heir to.
{filler}

CAROL:
{carol}
"""


def play_text() -> str:
    filler = " ".join(f"Line {i} of Alice's long speech, with a dollar $ in it." for i in range(12))
    carol = " ".join(f"Carol speaks line {i}, plainly and at length." for i in range(14))
    return PLAY.format(filler=filler, carol=carol)


def decode(codes: torch.Tensor) -> str:
    return "".join(shakespeare.ALL_LETTERS[c] if c < shakespeare.UNKNOWN else "\0" for c in codes.tolist())


def test_shakespeare_clients_are_roles_and_every_window_is_used_once():
    text = play_text()
    roles = shakespeare.role_texts(text)
    assert list(roles) == ["ALICE", "BOB", "CAROL"] and roles["BOB"] == "Short."
    assert roles["ALICE"].startswith("To be or not to be, that is the question: whether 'tis")
    ds = shakespeare.build(text)
    assert ds.info["roles"] == ["ALICE", "CAROL"] and ds.info["roles_dropped"] == 1  # BOB: too few windows
    assert ds.x_train.dtype == torch.int64 and ds.input_shape == (80,) and ds.num_classes == 81
    for client, role in enumerate(ds.info["roles"]):
        codes = torch.from_numpy(shakespeare.encode(roles[role]))
        n = len(codes) - 80
        train, test = ds.natural_train[client], ds.natural_test[client]
        # the role's windows in order: train = the first int(0.8 n), test from 79 windows after them to the end
        n_train = int(0.8 * n)
        assert len(train) == n_train and len(test) == n - n_train - 79
        expected = codes.unfold(0, 81, 1)
        assert torch.equal(ds.x_train[train], expected[:n_train, :80])
        assert torch.equal(ds.y_train[train], expected[:n_train, 80])
        assert torch.equal(ds.x_test[test], expected[n_train + 79:, :80])
        assert torch.equal(ds.y_test[test], expected[n_train + 79:, 80])
        # no client spans two roles: each of its windows is a piece of its own role's text
        window = decode(ds.x_train[train[-1]])
        assert window in roles[role].replace("$", "\0") and all(window not in roles[r] for r in roles if r != role)
    covered = np.concatenate(ds.natural_train)
    assert sorted(covered.tolist()) == list(range(len(ds.y_train)))  # every train sample in one client, once
    assert sorted(np.concatenate(ds.natural_test).tolist()) == list(range(len(ds.y_test)))
    assert int((ds.x_train == shakespeare.UNKNOWN).sum()) > 0  # '$' is outside LEAF's 80 characters


def test_shakespeare_minimum_is_leafs_rule():
    assert shakespeare.MIN_WINDOWS == 396
    assert all(len(part) for part in shakespeare.split_windows(396))
    assert not len(shakespeare.split_windows(395)[1])


def test_shakespeare_missing_file_says_where(tmp_path):
    (tmp_path / "input.txt").write_text("A:\nhello\n")
    with pytest.raises(FedsimError) as e:
        load_dataset("shakespeare", data_dir=tmp_path)
    assert "tinyshakespeare" in one_line(e) and "input.txt is there" in str(e.value)


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(), reason="no shared tiny-shakespeare copy")
def test_real_tiny_shakespeare():
    ds = load_dataset("shakespeare", data_dir=SHARED_SHAKESPEARE.parents[1])  # 0.7 s on a 2-core CPU
    assert len(ds.natural_train) == 183 and ds.info["roles_dropped"] == 126
    assert (len(ds.y_train), len(ds.y_test)) == (793_902, 184_114)
    assert "GLOUCESTER" in ds.info["roles"] and max(map(len, ds.natural_train)) == 30_026


# --------------------------------------------------------------------------------------------------
# user models
# --------------------------------------------------------------------------------------------------

class Small(nn.Module):
    def __init__(self, input_shape=(1, 8, 8), num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(int(np.prod(input_shape)), 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.fc1(x.flatten(1))))


class ConvOnly(nn.Module):
    """A classifier without nn.Linear: a 1x1 convolution and global pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Conv2d(4, 10, 1)

    def forward(self, x):
        return self.classifier(torch.relu(self.conv(x))).mean(dim=(2, 3))


def test_a_model_instance_is_copied_with_its_weights():
    mine = Small()
    model = resolve_model(mine, (1, 8, 8), 10)
    assert model is not mine and model.training
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), mine.parameters(), strict=True))


def test_a_factory_and_a_class_are_called_with_the_data_shape():
    model = resolve_model(lambda shape, classes: Small(shape, classes), (3, 4, 4), 7)
    assert model.fc.out_features == 7 and model.fc1.in_features == 48
    model = resolve_model(Small, (3, 4, 4), 7)  # keywords it has parameters for: Small(input_shape=, num_classes=)
    assert model.fc.out_features == 7 and model.fc1.in_features == 48
    assert isinstance(resolve_model(ConvOnly, (1, 8, 8), 10), ConvOnly)  # no such parameters: ConvOnly()


def test_token_models_are_probed_with_the_given_input_dtype():
    def embed(shape, classes):
        return nn.Sequential(nn.Embedding(classes, 4), nn.Flatten(), nn.Linear(4 * shape[0], classes))

    assert isinstance(resolve_model(embed, (5,), 9, input_dtype=torch.int64), nn.Sequential)
    with pytest.raises(FedsimError) as e:
        resolve_model(embed, (5,), 9)  # float zeros into an Embedding
    assert "(float32) failed with RuntimeError" in one_line(e)


def test_a_model_without_linear_gets_the_head_error_with_the_fix():
    model = resolve_model(ConvOnly(), (1, 8, 8), 10)
    with pytest.raises(FedsimError) as e:
        find_head(model)
    assert "no nn.Linear" in one_line(e) and "--head" in str(e.value) and "classifier" in str(e.value)
    assert find_head(model, "classifier") == ["classifier"]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes a module with a fresh name into the current directory (tmp_path); returns its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = []

    def write(source: str) -> str:
        name = f"user_models_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


GOOD = """
    import math
    from torch import nn

    class Net(nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.fc1 = nn.Linear(math.prod(input_shape), 8)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(self.fc1(x.flatten(1)).relu())

    class Ten(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    class Pair(Ten):
        def forward(self, x):
            return self.fc(x.flatten(1)), x

    class Picky(nn.Module):
        def __init__(self, width, num_classes):
            super().__init__()

    def make(input_shape, num_classes):
        return Net(input_shape, num_classes)

    def make_list(input_shape, num_classes):
        return [input_shape]

    def make_fails(input_shape, num_classes):
        return {}["no such key"]

    instance = Net((1, 8, 8), 10)
    NUMBER = 3
"""


def test_module_attr_resolves_a_class_a_factory_and_an_instance(user_module):
    name = user_module(GOOD)
    for attr in ("Net", "make", "instance", "Ten"):
        model = resolve_model(f"{name}:{attr}", (1, 8, 8), 10)
        assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10), attr
    assert resolve_model("fedsim.models.builtin:_char_lstm", (80,), 81, input_dtype=torch.int64).fc.out_features == 81


@pytest.mark.parametrize("spec, needle", [
    ("{m}", "package.module:attr"),
    ("{m}:Net:x", "package.module:attr"),
    ("no_such_module_xyz:Net", "no module 'no_such_module_xyz' in the current directory"),
    ("{m}.sub:Net", "no module"),
    ("{m}:Nope", "has no attribute 'Nope'; it defines Net, Pair, Picky, Ten, instance, make"),
    ("{m}:NUMBER", "is an int, not an nn.Module"),
    ("{m}:make_list", "returned a list, not an nn.Module"),
    ("{m}:make_fails", "failed with KeyError: 'no such key' (at "),
    ("{m}:Picky", "needs arguments other than input_shape and num_classes"),
    ("{m}:Ten", "shape (2, 10)"),
    ("{m}:Pair", "returns a tuple"),
])
def test_module_attr_errors_are_one_line(user_module, spec, needle):
    name = user_module(GOOD)
    with pytest.raises(FedsimError) as e:
        resolve_model(spec.format(m=name), (1, 8, 8), 47)
    assert needle in one_line(e)


def test_an_exception_inside_the_users_module_names_its_line_and_debug_adds_the_traceback(user_module):
    name = user_module("""
        import torch

        SCALE = 1 / 0
    """)
    with pytest.raises(FedsimError) as e:
        resolve_model(f"{name}:Net", (1, 8, 8), 10)
    assert f"importing {name} failed with ZeroDivisionError: division by zero (at " in one_line(e)
    assert f"{name}.py:4)" in str(e.value) and "--debug" in str(e.value)
    with pytest.raises(FedsimError) as e:
        resolve_model(f"{name}:Net", (1, 8, 8), 10, debug=True)
    assert "Traceback (most recent call last)" in str(e.value) and "SCALE = 1 / 0" in str(e.value)

    broken = user_module("def f(:\n")
    with pytest.raises(FedsimError) as e:
        resolve_model(f"{broken}:f", (1, 8, 8), 10)
    assert "SyntaxError" in one_line(e) and f"{broken}.py:1" in str(e.value)
    missing_dependency = user_module("import not_installed_anywhere_xyz\n")
    with pytest.raises(FedsimError) as e:
        resolve_model(f"{missing_dependency}:f", (1, 8, 8), 10)
    assert "ModuleNotFoundError" in one_line(e) and f"{missing_dependency}.py:1" in str(e.value)
