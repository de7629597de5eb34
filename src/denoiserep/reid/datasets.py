"""Readers for the on-disk formats of the standard re-identification benchmarks.

Every reader returns a `ReIDDataset` whose splits are lists of `(img_path, pid, camid)`:
train pids are relabelled to 0..N-1 (sorted original pids), query and gallery keep the
original pids, camids start at 0. Conventions follow torchreid / TransReID:

- Market-1501, DukeMTMC-reID, CUHK03-NP, VeRi-776: folders of images whose file names
  carry pid and camera; pid -1 (junk) is dropped, pid 0 (Market distractors) is kept.
- MSMT17: list files `<relative path> <pid>`, camera = third `_` field of the file name.
- VehicleID: list files `<image id> <vehicle id>`; no cameras, its own test protocol
  (`vehicleid_split`).

Files inside a folder are read in sorted name order, so results are deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Item = tuple[str, int, int]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# File-name stems (without suffix); group 1 = pid, group 2 = camera number (1-based).
MARKET_PATTERN = re.compile(r"(-?\d+)_c(\d)s\d+_\d+_\d+")  # 0002_c1s1_000451_03
DUKE_PATTERN = re.compile(r"(-?\d+)_c(\d)_f\d+")  # 0001_c2_f0046182
CUHK03_PATTERN = re.compile(r"(-?\d+)_c(\d)_\d+")  # 0001_c1_1
VERI_PATTERN = re.compile(r"(-?\d+)_c(\d{3})_\d+_\d+")  # 0001_c001_00016450_0
MSMT17_PATTERN = re.compile(r"\d+_\d+_(\d+)_.+")  # 0000_000_01_0303morning_0015_0


@dataclass
class ReIDDataset:
    """Train / query / gallery splits of `(img_path, pid, camid)` items."""

    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    name: str

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({camid for _, _, camid in self.train})


def _require_dir(path: Path, dataset: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: folder not found: {path}")
    return path


def _require_file(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: file not found: {path}")
    return path


def _non_empty(items: list[Item], split: str, dataset: str, source: Path) -> list[Item]:
    if not items:
        raise ValueError(f"{dataset}: split '{split}' has no images (read from {source})")
    return items


def relabel(items: Sequence[Item]) -> list[Item]:
    """Map the pids of `items` to 0..N-1 in sorted order of the original pids."""
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, label[pid], camid) for path, pid, camid in items]


def read_image_folder(folder: Path, pattern: re.Pattern, dataset: str) -> list[Item]:
    """Parse every image in `folder` whose name stem must fully match `pattern`.

    Drops pid -1 (junk); camid = camera number - 1. Raises ValueError naming the file and
    the expected pattern on a malformed name.
    """
    items = []
    for path in sorted(_require_dir(folder, dataset).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = pattern.fullmatch(path.stem)
        if match is None:
            raise ValueError(
                f"{dataset}: malformed image name {path} (expected {pattern.pattern} + suffix)"
            )
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            continue
        if pid < -1 or cam < 1:
            raise ValueError(f"{dataset}: invalid pid {pid} or camera {cam} in {path}")
        items.append((str(path), pid, cam - 1))
    return items


def _read_folder_layout(
    root: str | Path, folders: tuple[str, str, str], pattern: re.Pattern, dataset: str
) -> ReIDDataset:
    """Read a layout of three image folders (train, query, gallery)."""
    root = _require_dir(Path(root), dataset)
    splits = []
    for split, folder in zip(("train", "query", "gallery"), folders, strict=True):
        items = read_image_folder(root / folder, pattern, dataset)
        splits.append(_non_empty(items, split, dataset, root / folder))
    train, query, gallery = splits
    return ReIDDataset(relabel(train), query, gallery, dataset)


def read_market1501(root: str | Path) -> ReIDDataset:
    """Market-1501: `bounding_box_train`, `query`, `bounding_box_test` under `root`."""
    folders = ("bounding_box_train", "query", "bounding_box_test")
    return _read_folder_layout(root, folders, MARKET_PATTERN, "market1501")


def read_dukemtmcreid(root: str | Path) -> ReIDDataset:
    """DukeMTMC-reID: same folders as Market-1501, names like `0001_c2_f0046182.jpg`."""
    folders = ("bounding_box_train", "query", "bounding_box_test")
    return _read_folder_layout(root, folders, DUKE_PATTERN, "dukemtmcreid")


def read_cuhk03(root: str | Path, labeled: bool = True) -> ReIDDataset:
    """CUHK03 new protocol, CUHK03-NP layout: `root/{labeled,detected}/<Market folders>`."""
    sub = "labeled" if labeled else "detected"
    folders = ("bounding_box_train", "query", "bounding_box_test")
    return _read_folder_layout(Path(root) / sub, folders, CUHK03_PATTERN, f"cuhk03_{sub}")


def read_veri(root: str | Path) -> ReIDDataset:
    """VeRi-776: `image_train`, `image_query`, `image_test`, names `0001_c001_00016450_0.jpg`."""
    return _read_folder_layout(
        root, ("image_train", "image_query", "image_test"), VERI_PATTERN, "veri"
    )


def _read_list(list_file: Path, dataset: str) -> list[tuple[str, int]]:
    """Parse `<name> <integer label>` lines (blank lines ignored)."""
    entries = []
    lines = _require_file(list_file, dataset).read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(
                f"{dataset}: {list_file}:{number}: expected '<path> <integer id>', got {line!r}"
            )
        entries.append((fields[0], int(fields[1])))
    return entries


def _msmt17_split(list_file: Path, image_dir: Path, split: str) -> list[Item]:
    """Items of one MSMT17 list file; camid from the file name's third `_` field."""
    items = []
    for rel_path, pid in _read_list(list_file, "msmt17"):
        path = image_dir / rel_path
        match = MSMT17_PATTERN.fullmatch(Path(rel_path).stem)
        if match is None:
            raise ValueError(
                f"msmt17: malformed image name {rel_path} in {list_file} "
                f"(expected {MSMT17_PATTERN.pattern} + suffix)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"msmt17: {list_file} names a missing image: {path}")
        items.append((str(path), pid, int(match.group(1)) - 1))
    return _non_empty(items, split, "msmt17", list_file)


_MSMT17_LAYOUTS = (  # (sub-folder of root, train folder, test folder)
    ("", "train", "test"),
    ("MSMT17_V1", "train", "test"),
    ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
)


def _msmt17_layout(root: Path) -> tuple[Path, str, str]:
    """The folder holding list_train.txt, with its train and test folder names."""
    for version, train_name, test_name in _MSMT17_LAYOUTS:
        if (root / version / "list_train.txt").is_file():
            return root / version, train_name, test_name
    raise FileNotFoundError(
        f"msmt17: no list_train.txt in {root}, {root / 'MSMT17_V1'} or {root / 'MSMT17_V2'}"
    )


def read_msmt17(root: str | Path, use_val: bool = True) -> ReIDDataset:
    """MSMT17: `train/`, `test/` and `list_{train,val,query,gallery}.txt` under `root`.

    `root` may also be the folder holding `MSMT17_V1` (folders `train`, `test`) or
    `MSMT17_V2` (folders `mask_train_v2`, `mask_test_v2`). With `use_val` (default, as
    TransReID's reader does) the val list is merged into train; torchreid merges it only
    with `combineall=True`.
    """
    base, train_name, test_name = _msmt17_layout(_require_dir(Path(root), "msmt17"))
    train_dir = _require_dir(base / train_name, "msmt17")
    test_dir = _require_dir(base / test_name, "msmt17")
    train = _msmt17_split(base / "list_train.txt", train_dir, "train")
    if use_val:
        train = train + _msmt17_split(base / "list_val.txt", train_dir, "val")
    query = _msmt17_split(base / "list_query.txt", test_dir, "query")
    gallery = _msmt17_split(base / "list_gallery.txt", test_dir, "gallery")
    return ReIDDataset(relabel(train), query, gallery, "msmt17")


def vehicleid_split(test_items: Sequence[Item], seed: int = 0) -> tuple[list[Item], list[Item]]:
    """VehicleID test protocol: per vehicle, one random image is the gallery, the rest queries.

    Queries get camid 0 and gallery items camid 1, so no gallery item is ever discarded as
    a same-camera match. A vehicle with a single image contributes only a gallery item.
    """
    rng = np.random.default_rng(seed)
    by_pid: dict[int, list[str]] = {}
    for path, pid, _ in test_items:
        by_pid.setdefault(pid, []).append(path)
    query, gallery = [], []
    for pid in sorted(by_pid):
        paths = by_pid[pid]
        chosen = int(rng.integers(len(paths)))
        gallery.append((paths[chosen], pid, 1))
        query.extend((path, pid, 0) for k, path in enumerate(paths) if k != chosen)
    return query, gallery


def read_vehicleid(root: str | Path, test_size: int = 800, seed: int = 0) -> ReIDDataset:
    """VehicleID: `image/<id>.jpg`, `train_test_split/{train_list,test_list_<size>}.txt`.

    Train items get camid 0; query / gallery come from `vehicleid_split(test, seed)`.
    """
    if test_size not in (800, 1600, 2400):
        raise ValueError(f"vehicleid: test_size must be 800, 1600 or 2400, got {test_size}")
    root = _require_dir(Path(root), "vehicleid")
    image_dir = _require_dir(root / "image", "vehicleid")
    split_dir = _require_dir(root / "train_test_split", "vehicleid")

    def read(list_name: str) -> list[Item]:
        list_file = split_dir / list_name
        items = []
        for image_id, pid in _read_list(list_file, "vehicleid"):
            path = image_dir / f"{image_id}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"vehicleid: {list_file} names a missing image: {path}")
            items.append((str(path), pid, 0))
        return _non_empty(items, list_name, "vehicleid", list_file)

    train = read("train_list.txt")
    query, gallery = vehicleid_split(read(f"test_list_{test_size}.txt"), seed)
    return ReIDDataset(relabel(train), query, gallery, f"vehicleid_{test_size}")


READERS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": read_market1501,
    "dukemtmcreid": read_dukemtmcreid,
    "msmt17": read_msmt17,
    "cuhk03": read_cuhk03,
    "veri": read_veri,
    "vehicleid": read_vehicleid,
}


def build_reid_dataset(name: str, root: str | Path, **kwargs) -> ReIDDataset:
    """Read dataset `name` (a key of READERS) from `root`; kwargs go to its reader.

    cuhk03 takes `labeled: bool`, vehicleid `test_size: int` and `seed`, msmt17 `use_val`.
    """
    if name not in READERS:
        raise ValueError(f"unknown re-ID dataset {name!r}; expected one of {sorted(READERS)}")
    return READERS[name](root, **kwargs)


def merge_datasets(datasets: Sequence[ReIDDataset], name: str | None = None) -> ReIDDataset:
    """Union of several datasets with disjoint identities and cameras.

    Train pids are relabelled consecutively (dataset after dataset) to 0..N-1. Query and
    gallery are unioned too, each dataset's pids and camids shifted past the previous
    datasets' so that identities never match across datasets and same-camera discarding
    stays within a dataset. For per-dataset numbers evaluate on each original dataset.
    """
    if not datasets:
        raise ValueError("merge_datasets needs at least one dataset")
    train, query, gallery = [], [], []
    pid_offset = test_pid_offset = cam_offset = 0
    for ds in datasets:
        relabelled = relabel(ds.train)
        train += [(p, pid + pid_offset, cam + cam_offset) for p, pid, cam in relabelled]
        test = ds.query + ds.gallery
        query += [(p, pid + test_pid_offset, cam + cam_offset) for p, pid, cam in ds.query]
        gallery += [(p, pid + test_pid_offset, cam + cam_offset) for p, pid, cam in ds.gallery]
        pid_offset += ds.num_train_pids
        test_pid_offset += max((pid for _, pid, _ in test), default=-1) + 1
        cam_offset += 1 + max(cam for _, _, cam in ds.train + test)
    return ReIDDataset(train, query, gallery, name or "+".join(ds.name for ds in datasets))
