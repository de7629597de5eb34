"""Readers on tiny fixtures written in each benchmark's real on-disk layout."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoiserep.reid import (
    ReIDDataset,
    build_reid_dataset,
    evaluate,
    merge_datasets,
    read_cuhk03,
    read_dukemtmcreid,
    read_market1501,
    read_msmt17,
    read_vehicleid,
    read_veri,
    vehicleid_split,
)


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 8), (10, 20, 30)).save(folder / name)


def summary(items):
    """(file name, pid, camid) triples, order-independent."""
    return sorted((Path(p).name, pid, cam) for p, pid, cam in items)


@pytest.fixture
def market(tmp_path):
    write_images(
        tmp_path / "bounding_box_train",
        ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg"]
        + ["0010_c6s4_002452_02.jpg"],
    )
    (tmp_path / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    write_images(tmp_path / "query", ["0001_c1s1_001051_00.jpg", "0003_c2s1_000301_00.jpg"])
    write_images(
        tmp_path / "bounding_box_test",
        ["0001_c2s1_000301_01.jpg", "0003_c1s1_000001_01.jpg", "0000_c1s1_000151_01.jpg"]
        + ["-1_c1s1_000401_03.jpg"],
    )
    return tmp_path


def test_market1501(market):
    ds = read_market1501(market)
    assert ds.name == "market1501"
    # train pids 2, 7, 10 relabelled to 0, 1, 2; camid = c - 1; Thumbs.db ignored
    assert summary(ds.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000551_01.jpg", 0, 1),
        ("0007_c3s3_077419_03.jpg", 1, 2),
        ("0010_c6s4_002452_02.jpg", 2, 5),
    ]
    assert ds.num_train_pids == 3 and ds.num_train_cams == 4
    assert summary(ds.query) == [
        ("0001_c1s1_001051_00.jpg", 1, 0),
        ("0003_c2s1_000301_00.jpg", 3, 1),
    ]
    # junk (-1) dropped, distractor (0) kept in the gallery with its original pid
    assert summary(ds.gallery) == [
        ("0000_c1s1_000151_01.jpg", 0, 0),
        ("0001_c2s1_000301_01.jpg", 1, 1),
        ("0003_c1s1_000001_01.jpg", 3, 0),
    ]
    assert all(Path(p).is_file() for p, _, _ in ds.train + ds.query + ds.gallery)
    assert summary(build_reid_dataset("market1501", str(market)).train) == summary(ds.train)


def test_market1501_malformed_name(market):
    write_images(market / "query", ["0002_c1.jpg"])
    with pytest.raises(ValueError, match=r"0002_c1\.jpg.*expected"):
        read_market1501(market)


def test_market1501_missing_folder(market):
    for f in (market / "query").iterdir():
        f.unlink()
    (market / "query").rmdir()
    with pytest.raises(FileNotFoundError, match="query"):
        read_market1501(market)


def test_market1501_empty_split(market):
    for f in (market / "query").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="split 'query' has no images"):
        read_market1501(market)


def test_dukemtmcreid(tmp_path):
    write_images(tmp_path / "bounding_box_train", ["0005_c2_f0046182.jpg", "0009_c8_f0000001.jpg"])
    write_images(tmp_path / "query", ["0011_c1_f0000002.jpg"])
    write_images(tmp_path / "bounding_box_test", ["0011_c5_f0000003.jpg"])
    ds = read_dukemtmcreid(tmp_path)
    assert summary(ds.train) == [("0005_c2_f0046182.jpg", 0, 1), ("0009_c8_f0000001.jpg", 1, 7)]
    assert summary(ds.gallery) == [("0011_c5_f0000003.jpg", 11, 4)]
    write_images(tmp_path / "query", ["0011_c1s1_000001_01.jpg"])  # a Market name
    with pytest.raises(ValueError, match="0011_c1s1_000001_01"):
        read_dukemtmcreid(tmp_path)


def test_cuhk03_labeled_and_detected(tmp_path):
    for sub, pid in (("labeled", 1), ("detected", 2)):
        write_images(tmp_path / sub / "bounding_box_train", [f"{pid:04d}_c1_1.png"])
        write_images(tmp_path / sub / "query", ["0100_c1_1.png"])
        write_images(tmp_path / sub / "bounding_box_test", ["0100_c2_2.png"])
    labeled = read_cuhk03(tmp_path, labeled=True)
    detected = build_reid_dataset("cuhk03", tmp_path, labeled=False)
    assert summary(labeled.train) == [("0001_c1_1.png", 0, 0)]
    assert summary(detected.train) == [("0002_c1_1.png", 0, 0)]
    assert summary(detected.gallery) == [("0100_c2_2.png", 100, 1)]
    assert labeled.name == "cuhk03_labeled" and detected.name == "cuhk03_detected"


def test_veri(tmp_path):
    write_images(tmp_path / "image_train", ["0001_c001_00016450_0.jpg", "0004_c012_00001_1.jpg"])
    write_images(tmp_path / "image_query", ["0002_c002_00030600_0.jpg"])
    write_images(tmp_path / "image_test", ["0002_c020_00030605_1.jpg"])
    ds = read_veri(tmp_path)
    assert summary(ds.train) == [
        ("0001_c001_00016450_0.jpg", 0, 0),
        ("0004_c012_00001_1.jpg", 1, 11),
    ]
    assert summary(ds.gallery) == [("0002_c020_00030605_1.jpg", 2, 19)]
    (tmp_path / "image_test" / "0002_c020_00030605_1.jpg").rename(tmp_path / "image_test" / "x.jpg")
    with pytest.raises(ValueError, match=r"x\.jpg"):
        read_veri(tmp_path)


def _msmt17_fixture(root: Path) -> Path:
    base = root / "MSMT17_V1"
    train = {
        "0000/0000_000_01_0303morning_0015_0.jpg": 0,
        "0001/0001_003_07_0303noon_0101_1.jpg": 1,
    }
    val = {"0001/0001_004_15_0303noon_0102_0.jpg": 1, "0003/0003_000_02_0303morning_0001_0.jpg": 3}
    query = {"0000/0000_000_01_0303morning_0001_0.jpg": 0}
    gallery = {"0000/0000_001_03_0303morning_0002_0.jpg": 0, "0002/0002_000_01_x_0003_0.jpg": 2}
    for folder, lists in (
        ("train", (("train", train), ("val", val))),
        ("test", (("query", query), ("gallery", gallery))),
    ):
        for list_name, entries in lists:
            for rel in entries:
                write_images((base / folder / rel).parent, [Path(rel).name])
            lines = "".join(f"{rel} {pid}\n" for rel, pid in entries.items())
            (base / f"list_{list_name}.txt").write_text(lines)
    return base


def test_msmt17(tmp_path):
    _msmt17_fixture(tmp_path)
    ds = read_msmt17(tmp_path)
    # train + val merged, pids {0, 1, 3} relabelled; camid = third '_' field - 1
    assert summary(ds.train) == [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0001_003_07_0303noon_0101_1.jpg", 1, 6),
        ("0001_004_15_0303noon_0102_0.jpg", 1, 14),
        ("0003_000_02_0303morning_0001_0.jpg", 2, 1),
    ]
    assert summary(ds.query) == [("0000_000_01_0303morning_0001_0.jpg", 0, 0)]
    assert summary(ds.gallery) == [
        ("0000_001_03_0303morning_0002_0.jpg", 0, 2),
        ("0002_000_01_x_0003_0.jpg", 2, 0),
    ]
    assert len(read_msmt17(tmp_path / "MSMT17_V1", use_val=False).train) == 2


def test_msmt17_list_names_missing_image(tmp_path):
    base = _msmt17_fixture(tmp_path)
    with open(base / "list_gallery.txt", "a") as f:
        f.write("0009/0009_000_01_0303morning_0001_0.jpg 9\n")
    with pytest.raises(FileNotFoundError, match="list_gallery.txt names a missing image"):
        read_msmt17(tmp_path)


def test_msmt17_malformed_list_line_and_name(tmp_path):
    base = _msmt17_fixture(tmp_path)
    (base / "list_query.txt").write_text("0000/0000_000_01_0303morning_0001_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt:1"):
        read_msmt17(tmp_path)
    write_images(base / "test" / "0000", ["badname.jpg"])
    (base / "list_query.txt").write_text("0000/badname.jpg 0\n")
    with pytest.raises(ValueError, match="badname"):
        read_msmt17(tmp_path)


def test_msmt17_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="list_train.txt"):
        read_msmt17(tmp_path)


def _vehicleid_fixture(root: Path) -> None:
    # train: vehicles 7 (2 images), 9 (1 image); test: vehicle 3 (3 images), 5 (1 image)
    names = {"0001": 7, "0002": 7, "0003": 9}
    test = {"0010": 3, "0011": 3, "0012": 3, "0013": 5}
    write_images(root / "image", [f"{n}.jpg" for n in [*names, *test]])
    (root / "train_test_split").mkdir()
    (root / "train_test_split" / "train_list.txt").write_text(
        "".join(f"{n} {v}\n" for n, v in names.items())
    )
    (root / "train_test_split" / "test_list_800.txt").write_text(
        "".join(f"{n} {v}\n" for n, v in test.items())
    )


def test_vehicleid(tmp_path):
    _vehicleid_fixture(tmp_path)
    ds = build_reid_dataset("vehicleid", tmp_path, test_size=800)
    assert summary(ds.train) == [("0001.jpg", 0, 0), ("0002.jpg", 0, 0), ("0003.jpg", 1, 0)]
    # one gallery image per vehicle (camid 1), the rest queries (camid 0)
    assert sorted(pid for _, pid, _ in ds.gallery) == [3, 5]
    assert {cam for _, _, cam in ds.gallery} == {1} and {cam for _, _, cam in ds.query} == {0}
    assert sorted(pid for _, pid, _ in ds.query) == [3, 3]
    test_paths = {p for p, _, _ in ds.query + ds.gallery}
    assert {Path(p).name for p in test_paths} == {"0010.jpg", "0011.jpg", "0012.jpg", "0013.jpg"}
    # no gallery item is discarded: each query's single gallery match counts
    q_pids = np.array([pid for _, pid, _ in ds.query])
    g_pids = np.array([pid for _, pid, _ in ds.gallery])
    distmat = (q_pids[:, None] != g_pids[None, :]).astype(float)
    cmc, mAP = evaluate(distmat, q_pids, g_pids, np.zeros(2, int), np.ones(2, int))
    assert mAP == 1.0


def test_vehicleid_split_is_seeded():
    items = [(f"{i}.jpg", i // 4, 0) for i in range(40)]
    q1, g1 = vehicleid_split(items, seed=1)
    q2, g2 = vehicleid_split(items, seed=1)
    assert (q1, g1) == (q2, g2)
    assert len(g1) == 10 and len(q1) == 30
    assert any(vehicleid_split(items, seed=s)[1] != g1 for s in range(2, 6))


def test_vehicleid_errors(tmp_path):
    _vehicleid_fixture(tmp_path)
    with pytest.raises(ValueError, match="test_size"):
        read_vehicleid(tmp_path, test_size=100)
    with open(tmp_path / "train_test_split" / "train_list.txt", "a") as f:
        f.write("0099 4\n")
    with pytest.raises(FileNotFoundError, match="0099.jpg"):
        read_vehicleid(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_vehicleid(tmp_path / "nowhere")
    (tmp_path / "only_lists" / "train_test_split").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"folder not found: .*only_lists/image"):
        read_vehicleid(tmp_path / "only_lists")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown re-ID dataset 'market'"):
        build_reid_dataset("market", "/tmp")


def test_merge_datasets():
    a = ReIDDataset(
        train=[("a1", 0, 0), ("a2", 1, 1)], query=[("aq", 5, 0)], gallery=[("ag", 5, 1)], name="a"
    )
    b = ReIDDataset(
        train=[("b1", 3, 0), ("b2", 8, 2)], query=[("bq", 5, 0)], gallery=[("bg", 0, 1)], name="b"
    )
    merged = merge_datasets([a, b])
    assert merged.name == "a+b"
    # b's train pids 3, 8 -> 0, 1 -> shifted past a's 2 identities; cameras past a's 0..1
    assert merged.train == [("a1", 0, 0), ("a2", 1, 1), ("b1", 2, 2), ("b2", 3, 4)]
    # test pids shifted past a's largest test pid (5): pid 5 of b never matches pid 5 of a
    assert merged.query == [("aq", 5, 0), ("bq", 11, 2)]
    assert merged.gallery == [("ag", 5, 1), ("bg", 6, 3)]
    with pytest.raises(ValueError, match="at least one"):
        merge_datasets([])
