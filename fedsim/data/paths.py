"""`--dataset PATH`: a folder of images (folder.py) or an `.npz` file (npz.py) named in place of a dataset name.

A registered name wins over a folder of the same name in the current directory (write `./mnist` for the
folder). Options: `image_size`, `test_fraction`, `normalize` (image folders only) and `seed` (the seed of
`test_fraction`'s split; default 0). `devices` is ignored, as for every dataset that draws nothing.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.errors import FedsimError

FOLDER_OPTIONS = {"image_size", "test_fraction", "normalize"}


def dataset_path(name: str) -> Path | None:
    """The folder or .npz file `name` points at, or None when it names neither."""
    path = Path(name).expanduser()
    return path if path.is_dir() or path.suffix.lower() == ".npz" else None


def load_path(path: Path, data_dir: Path, **options):
    """The Dataset of a folder of images or an .npz file; `data_dir` holds the decoded-image cache when the folder
    itself is not writable."""
    seed = options.pop("seed", None)
    options.pop("devices", None)
    if path.is_dir():
        from fedsim.data.folder import load_image_folder

        return load_image_folder(path, data_dir, seed=seed, **options)
    if options:
        raise FedsimError(f"option(s) {', '.join(sorted(options))} apply only to a folder of images, not to "
                          f"{path}")
    if not path.is_file():
        raise FedsimError(f"dataset file {path} does not exist")
    from fedsim.data.npz import load_npz

    return load_npz(path)
