"""A folder of images in torchvision's ImageFolder layout as a Dataset, decoded once and cached.

Layouts (hidden entries, and files that are not images, are skipped):

    PATH/train/<class>/*.png|jpg|...  and  PATH/test/<class>/...    the given split
    PATH/<class>/*.png|jpg|...                                      test_fraction (default 0.2) of each class
                                                                    to test (stratified, by `seed`, default 0)

Classes are the sorted union of the class folder names (label = position). Images are decoded with Pillow
in a thread pool and converted to one mode for the whole dataset: RGB if any image is colour, else L
(grayscale). `image_size=(H, W)` resizes every image (bilinear); without it all images must have one size.
Inputs are (pixel / 255 - mean) / std per channel, mean and std over the train split's pixels
(`normalize="standard"`, the default), or the other NORMALIZATIONS of the named image datasets: "symmetric"
([-1, 1]) and "unit" ([0, 1]).

The decoded uint8 tensors are cached in `PATH/.fedsim-cache/` (else, when PATH is not writable,
`<data_dir>/.fedsim-cache/`), keyed by a hash of the file list, sizes, modification times and image_size:
a changed, added or removed image means a fresh decode. The split and normalization are recomputed on
every load (cheap), so they are not part of the key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError

# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_TEST_FRACTION = 0.2
CACHE_FOLDER = ".fedsim-cache"
_CACHE_VERSION = 1
# Pillow modes that hold one gray channel (with or without alpha); every other mode is decoded as colour
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """class name -> its image files, for every class folder under `root`."""
    classes = {}
    for folder in (p for p in _visible(root) if p.is_dir()):
        images = [p for p in _visible(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise FedsimError(f"image folder: class folder {folder} holds no images (expected "
                              f"{', '.join(IMAGE_EXTENSIONS)} files)")
        classes[folder.name] = images
    return classes


def _listing(path: Path) -> tuple[dict[str, dict[str, list[Path]]], bool]:
    """({split: {class: files}}, whether the folder gives its own train/test split)."""
    if not path.is_dir():
        raise FedsimError(f"image folder {path} does not exist")
    if (path / "train").is_dir():
        if not (path / "test").is_dir():
            raise FedsimError(f"image folder {path} has train/ but no test/: add test/<class>/ folders, or "
                              f"put the class folders directly in {path} and pass --test-fraction")
        splits = {s: _class_folders(path / s) for s in ("train", "test")}
        if not splits["train"]:
            raise FedsimError(f"image folder {path / 'train'} holds no class folders (expected train/<class>/*.png)")
        return splits, True
    splits = {"all": _class_folders(path)}
    if not splits["all"]:
        raise FedsimError(f"image folder {path} is empty: expected <class>/*.png|jpg folders, or train/<class>/ "
                          f"and test/<class>/")
    return splits, False


def _image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise FedsimError(f"image_size must be a positive whole number or a pair (H, W), got {image_size!r}")
    return int(size[0]), int(size[1])


def _decode(path, size: tuple[int, int] | None, name: str | None = None) -> np.ndarray:
    """One image (a path, or a file object named `name`) as uint8 (H, W) for gray or (H, W, 3) for colour, resized
    to `size` (H, W) when given."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FedsimError(f"cannot read image {name or path} ({' '.join(str(e).split())[:200]}); "
                          f"replace or remove it") from None


def _decode_all(files: list, size: tuple[int, int] | None, names: list[str] | None = None,
                on_decoded=None) -> np.ndarray:
    """Every file (a path, or a file object named by `names`) decoded in a thread pool (Pillow releases the GIL
    while decoding) as uint8 (N, C, H, W); `on_decoded()` after each (a progress bar)."""
    names = names or [Path(f).name for f in files]
    workers = min(32, (os.cpu_count() or 1) + 4)

    def decode(item):
        image = _decode(item[0], size, item[1])
        if on_decoded is not None:
            on_decoded()
        return image

    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(decode, zip(files, names, strict=True)))
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        first = images[0].shape[:2]
        other = next(i for i, im in enumerate(images) if im.shape[:2] != first)
        raise FedsimError(f"images differ in size ({names[0]} is {first[0]}x{first[1]}, {names[other]} "
                          f"{images[other].shape[0]}x{images[other].shape[1]}): pass --image-size H[,W] to resize "
                          f"them all")
    colour = any(im.ndim == 3 for im in images)
    out = np.empty((len(images), 3 if colour else 1, *images[0].shape[:2]), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = im.transpose(2, 0, 1) if im.ndim == 3 else im[None]  # gray broadcasts to the 3 channels
    return out


def _check_memory(path: Path, files: list[Path], size: tuple[int, int] | None) -> None:
    """FedsimError when the decoded images would not fit in the memory available: each pixel takes one byte
    decoded and four once normalized to float32, and the decoding threads hold their images at full size too.
    Checked before decoding, from the first image's header (its mode, and its size when `size` is None)."""
    from PIL import Image

    from fedsim.data.user import available_memory

    try:
        with Image.open(files[0]) as image:
            channels = 1 if image.mode in _GRAY_MODES else 3
            height, width = size or (image.height, image.width)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return  # decoding says what is wrong with it
    need = len(files) * channels * height * width * 5
    free = available_memory()
    if need > free:
        resize = f" --image-size {height},{width}" if size is not None else " their size"
        raise FedsimError(f"image folder {path}: {len(files):,} images of {channels}x{height}x{width} need about "
                          f"{need / 2**30:.1f} GiB of memory decoded, but {free / 2**30:.1f} GiB is available: "
                          f"lower{resize}")


def _cache_key(path: Path, files: list[Path], size: tuple[int, int] | None) -> str:
    digest = hashlib.sha256(f"v{_CACHE_VERSION} size={size}".encode())
    for f in files:
        st = f.stat()
        digest.update(f"\0{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _cache_paths(path: Path, data_dir: Path, key: str) -> list[Path]:
    """Where the cache may be: in the folder itself, then under the data folder (named by the folder's path)."""
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return [path / CACHE_FOLDER / f"images-{key}.pt", data_dir / CACHE_FOLDER / f"{path.name}-{where}-{key}.pt"]


def _read_cache(candidates: list[Path], count: int):
    """(the cached uint8 images, the file) from the first readable candidate holding `count` images, else
    (None, None)."""
    import torch

    for candidate in candidates:
        if candidate.is_file():
            try:
                images = torch.load(candidate, weights_only=True)["images"]
            except Exception:  # a damaged or foreign file: decode again and overwrite it
                continue
            if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and len(images) == count:
                return images, candidate
    return None, None


def _write_cache(candidates: list[Path], content: dict) -> Path | None:
    """Save to the first writable candidate (through a temporary file and a rename), removing the stale caches
    of the same folder there; None when none is writable (the load still works, only slower next time)."""
    import torch

    for candidate in candidates:
        stale_prefix = candidate.name.rsplit("-", 1)[0] + "-"
        tmp = None
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=candidate.parent, suffix=".tmp", delete=False) as tmp:
                torch.save(content, tmp)
            os.replace(tmp.name, candidate)
        except OSError:
            if tmp is not None:
                Path(tmp.name).unlink(missing_ok=True)
            continue
        for old in candidate.parent.glob(stale_prefix + "*.pt"):
            if old != candidate:
                old.unlink(missing_ok=True)
        return candidate
    return None


def _stratified_test(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean test mask: round(fraction x n_c) random samples of each class c."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        is_test[rng.permutation(where)[: round(fraction * len(where))]] = True
    return is_test


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1], from each channel's histogram of
    pixel values: exact, with no float copy of the images."""
    counts = np.stack([np.bincount(images[:, c].ravel(), minlength=256) for c in range(images.shape[1])])
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum(axis=1)
    std = np.sqrt(np.maximum(counts @ values**2 / counts.sum(axis=1) - mean**2, 1e-16))
    return tuple(mean.tolist()), tuple(std.tolist())


def load_image_folder(path: str | Path, data_dir: str | Path, image_size=None, test_fraction: float | None = None,
                      seed: int | None = None, normalize: str | None = None):
    """The Dataset of an image folder (see the module docstring)."""
    import torch

    from fedsim.data.datasets import Dataset, _normalize, _scaling

    path = Path(path)
    size = _image_size(image_size)
    splits, given = _listing(path)
    if given and test_fraction is not None:
        raise FedsimError(f"image folder {path} has its own test/ split: drop --test-fraction")
    if test_fraction is None:
        test_fraction = DEFAULT_TEST_FRACTION
    if not given and not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise FedsimError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    classes = sorted({c for per_class in splits.values() for c in per_class})
    files, labels, split_of = [], [], []
    for split, per_class in splits.items():
        for c in sorted(per_class):
            files += per_class[c]
            labels += [classes.index(c)] * len(per_class[c])
            split_of += [split] * len(per_class[c])
    labels, split_of = np.asarray(labels, dtype=np.int64), np.asarray(split_of)
    # refused before anything is decoded or cached in the user's folder
    is_test = split_of == "test" if given else _stratified_test(labels, test_fraction, 0 if seed is None else seed)
    if not is_test.any():
        raise FedsimError(f"image folder {path}: the test split is empty; add test images or raise --test-fraction")

    candidates = _cache_paths(path, Path(data_dir), _cache_key(path, files, size))
    images, cache_file = _read_cache(candidates, len(files))
    cache_hit = images is not None
    if not cache_hit:
        _check_memory(path, files, size)
        images = torch.from_numpy(_decode_all(files, size))
        cache_file = _write_cache(candidates, {"images": images})
    images = images.numpy()
    train, test = images[~is_test], images[is_test]
    mean, std = _scaling(normalize, *channel_stats(train))
    info = {"folder": str(path.resolve()), "classes": classes, "layout": "train/test" if given else "classes",
            "test_fraction": None if given else test_fraction, "mode": "RGB" if images.shape[1] == 3 else "L",
            "image_size": list(images.shape[2:]), "normalize": normalize or "standard", "mean": list(mean),
            "std": list(std), "images": len(files),
            "cache": str(cache_file) if cache_file else None, "cache_hit": cache_hit}
    return Dataset(path.name, _normalize(train, mean, std), torch.from_numpy(labels[~is_test]),
                   _normalize(test, mean, std), torch.from_numpy(labels[is_test]), num_classes=len(classes),
                   info=info)
