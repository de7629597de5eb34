"""Every paper-row config of docs/reproduce.md, end to end through the command that page gives,
on a miniature fixture written here in the row's real on-disk layout (a handful of images at the
row's real image size; one epoch of two-image batches), so that no config can rot.

Where the row's real architecture is too slow for this suite on a CPU, the test overrides
``model.name`` / ``model.kwargs`` with the same family at its smallest (each row says which);
weights from a hub or a file are replaced by random initialisation (``model.pretrained=false``,
``model.checkpoint=null``). The configs themselves are untouched: only ``key=value`` overrides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoiserep.cli import main, packaged_config
from tests.data.test_classification_readers import (
    write_cifar10,
    write_cub,
    write_flowers,
    write_pet,
)
from tests.reid.test_reid_pipeline import write_market

# ------------------------------------------------------------------------------ fixtures


def upscale(root: Path, size: tuple[int, int]) -> Path:
    """Re-save every JPEG / PNG under ``root`` at ``size`` (width, height), keeping its colour
    pattern: the shared writers make 4-16 px images, the rows read photographs."""
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as img:
                big = img.convert("RGB").resize(size, Image.NEAREST)
            big.save(path, "JPEG" if path.suffix.lower() != ".png" else "PNG")
    return root


def photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A ``size`` (width, height) JPEG / PNG of a random 8 x 8 colour pattern, blown up."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern).resize(size, Image.NEAREST).save(path)


def write_imagenet(root: Path) -> Path:
    """ILSVRC-2012 after the usual preparation: train/<wnid>/<wnid>_N.JPEG and the validation
    images re-sorted into val/<wnid>/ILSVRC2012_val_N.JPEG; 500 x 375, ImageNet's typical size."""
    seed = 0
    for wnid in ("n01440764", "n01443537"):
        for k in (1, 2):
            seed += 1
            photo(root / "train" / wnid / f"{wnid}_{k}.JPEG", (500, 375), seed)
        seed += 1
        photo(root / "val" / wnid / f"ILSVRC2012_val_{seed:08d}.JPEG", (500, 375), seed)
    return root


def write_reid_folders(root: Path, name, train_ids, test_ids, size=(64, 128)) -> Path:
    """bounding_box_train / query / bounding_box_test with names from ``name(pid, cam, k)``:
    2 images per train identity and camera (2 cameras); per test identity one query (camera 1)
    and two gallery images (camera 2)."""
    for pid in train_ids:
        for cam in (1, 2):
            for k in (1, 2):
                photo(root / "bounding_box_train" / name(pid, cam, k), size, pid * 10 + cam)
    for pid in test_ids:
        photo(root / "query" / name(pid, 1, 1), size, pid * 10 + 1)
        for k in (1, 2):
            photo(root / "bounding_box_test" / name(pid, 2, k), size, pid * 10 + 2)
    return root


def write_dukemtmc(root: Path) -> Path:
    def name(pid, cam, k):
        return f"{pid:04d}_c{cam}_f{k:07d}.jpg"

    return write_reid_folders(root / "DukeMTMC-reID", name, (1, 2, 3), (5, 7), (96, 240))


def write_cuhk03_np(root: Path) -> Path:
    """The CUHK03-NP release (the new protocol's split): labeled/ and detected/ folders."""
    for sub in ("labeled", "detected"):
        write_reid_folders(
            root / sub, lambda p, c, k: f"{p:04d}_c{c}_{k}.png", (1, 2, 3), (4, 5), (80, 200)
        )
    return root


def write_msmt17(root: Path) -> Path:
    """MSMT17_V1: train/<pid>/, test/<pid>/ and list_{train,val,query,gallery}.txt."""
    base = root / "MSMT17_V1"
    lists: dict[str, list[str]] = {s: [] for s in ("train", "val", "query", "gallery")}
    for split, folder, pids in (("train", "train", (0, 1, 2)), ("test", "test", (0, 1))):
        for pid in pids:
            for cam in (1, 2):
                for k in (1, 2):
                    rel = f"{pid:04d}/{pid:04d}_{k:03d}_{cam:02d}_0303morning_{k:04d}_0.jpg"
                    photo(base / folder / rel, (80, 200), pid * 10 + cam)
                    if split == "train":
                        lists["val" if (pid, cam, k) == (2, 2, 2) else "train"].append(
                            f"{rel} {pid}"
                        )
                    else:
                        lists["query" if (cam, k) == (1, 1) else "gallery"].append(f"{rel} {pid}")
    for split, lines in lists.items():
        (base / f"list_{split}.txt").write_text("".join(line + "\n" for line in lines))
    return root


def write_vehicleid(root: Path) -> Path:
    """VehicleID_V1.0: image/<id>.jpg and train_test_split/{train_list,test_list_800}.txt."""
    base = root / "VehicleID_V1.0"
    train = {f"{i:07d}": 10 + i // 2 for i in range(6)}  # 3 vehicles x 2 images
    test = {f"{i:07d}": 20 + (i - 20) // 2 for i in range(20, 24)}  # 2 vehicles x 2 images
    for image_id, vid in {**train, **test}.items():
        photo(base / "image" / f"{image_id}.jpg", (200, 160), vid)
    (base / "train_test_split").mkdir()
    for list_name, entries in (("train_list", train), ("test_list_800", test)):
        lines = "".join(f"{image_id} {vid}\n" for image_id, vid in entries.items())
        (base / "train_test_split" / f"{list_name}.txt").write_text(lines)
    return base


def write_coco(root: Path) -> Path:
    """COCO 2017: train2017/, val2017/ and annotations/instances_{train,val}2017.json (boxes and
    polygons; category ids 1 and 18 as in COCO, not contiguous), 640 x 480 images."""
    for split in ("train2017", "val2017"):
        images, annotations = [], []
        for i in (1, 2):
            image_id = i + (100 if split == "val2017" else 0)
            file_name = f"{image_id:012d}.jpg"
            photo(root / split / file_name, (640, 480), image_id)
            images.append({"id": image_id, "file_name": file_name, "height": 480, "width": 640})
            for j, (cat, (x, y, w, h)) in enumerate(
                ((1, (40, 60, 200, 160)), (18, (300, 200, 180, 220)))
            ):
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
                annotations.append(
                    {
                        "id": image_id * 10 + j,
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": [x, y, w, h],
                        "area": float(w * h),
                        "iscrowd": 0,
                        "segmentation": [polygon],
                    }
                )
        categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        name = f"instances_{split}.json"
        (root / "annotations" / name).write_text(json.dumps(data))
    return root


def write_ade20k(root: Path, size: tuple[int, int] = (96, 72)) -> Path:
    """ADEChallengeData2016: images/{training,validation}/*.jpg and annotations/.../*.png (label
    0 = other, 1..150). Small images (ADE20K's are about 683 x 512): the validation images are
    evaluated whole, and an FCN-ResNet on a 683 x 512 image takes seconds on a CPU."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, tag, n in (("training", "train", 2), ("validation", "val", 2)):
        for i in range(1, n + 1):
            stem = f"ADE_{tag}_{i:08d}"
            photo(base / "images" / split / f"{stem}.jpg", size, i)
            labels = rng.integers(0, 151, (8, 8), dtype=np.uint8)
            mask = Image.fromarray(labels).resize(size, Image.NEAREST)
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            mask.save(base / "annotations" / split / f"{stem}.png")
    return base


# ------------------------------------------------------------------------------ the rows

# One epoch of two-image batches, in-process loaders, no hub or weights file, float32 (the
# configs' bf16 autocast is for GPUs: on this project's CPU, without bf16 units, the Mask R-CNN
# row's backward pass took 86 s in bf16 and 5.6 s in float32).
FP32 = ["baseline.amp=false", "finetune.amp=false"]
CLASSIFY = FP32 + [
    "data.workers=0",
    "data.eval_batch_size=2",
    "baseline.batch_size=2",
    "baseline.workers=0",
    "finetune.epochs=1",
    "finetune.batch_size=2",
    "finetune.workers=0",
    "model.pretrained=false",
    "model.checkpoint=null",
    "latency_repeats=1",
    "arms=[denoiserep]",  # the baseline and the DenoiseRep arm; the control arm is skipped
]
TRAINED_BASELINE = ["baseline.epochs=1"]  # rows whose baseline trains (transfer, CIFAR)
REID = FP32 + [
    "data.num_instances=2",
    "eval.batch_size=4",
    "baseline.epochs=1",
    "baseline.batch_size=4",
    "baseline.workers=0",
    "baseline.warmup_epochs=0",
    "finetune.epochs=1",
    "finetune.batch_size=4",
    "finetune.workers=0",
    "model.checkpoint=null",
    "latency_repeats=1",
    "arms=[denoiserep]",
]
# the rows' TransReID-SSL ViT (ICS stem) with 1 block of width 64 (ViT-S: 12 of 384), at the row's
# real input size
REID_VIT = ["model.kwargs={{img_size: [{h}, {w}], depth: 1, embed_dim: 64, num_heads: 2}}"]
DENSE = FP32 + [
    "data.eval_batch_size=2",
    "baseline.epochs=1",
    "baseline.batch_size=2",
    "baseline.workers=0",
    "baseline.warmup_epochs=0",
    "finetune.epochs=1",
    "finetune.batch_size=2",
    "finetune.workers=0",
    "model.pretrained=false",
    "latency_repeats=1",
    "arms=[denoiserep]",
]
SWINV2_SMALLEST = "model.kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}"
VIT_B_SMALLEST = "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"
# VMamba-micro at 64 px: the pure-PyTorch selective scan over 224 px (3,136 tokens per
# direction) takes about a minute per run on a CPU
VMAMBA_SMALLEST = "model.name=vmamba_micro"
VMAMBA_SIZE = "data.input_size=64"
SEGFORMER_SMALLEST = (
    "model.kwargs={depths: [1, 1, 1, 1], hidden_sizes: [8, 16, 24, 32], "
    "num_attention_heads: [1, 1, 1, 1], decoder_hidden_size: 32}"
)

# row config -> (command, fixture writer, the miniature's overrides)
ROWS: dict[str, tuple[str, object, list[str]]] = {}


def classify_row(name: str, writer, model: list[str], trained: bool = False) -> None:
    ROWS[name] = ("classify", writer, CLASSIFY + (TRAINED_BASELINE if trained else []) + model)


# ImageNet-1k at the weights' resolution (SwinV2 256, the others 224)
classify_row("imagenet_swinv2_t", write_imagenet, [SWINV2_SMALLEST])  # SwinV2, 1 block/stage
classify_row("imagenet_swinv2_s", write_imagenet, [SWINV2_SMALLEST])
classify_row("imagenet_swinv2_b", write_imagenet, [SWINV2_SMALLEST])
classify_row("imagenet_vmamba_t", write_imagenet, [VMAMBA_SMALLEST, VMAMBA_SIZE])
classify_row("imagenet_vmamba_s", write_imagenet, [VMAMBA_SMALLEST, VMAMBA_SIZE])
classify_row("imagenet_vmamba_b", write_imagenet, [VMAMBA_SMALLEST, VMAMBA_SIZE])
classify_row("imagenet_vit_s", write_imagenet, [VIT_B_SMALLEST])  # ViT-S/16 layout, width 32
classify_row("imagenet_vit_b", write_imagenet, [VIT_B_SMALLEST])  # ViT-B/16 layout, width 32
classify_row("imagenet_resnet50", write_imagenet, ["model.name=resnet10t"])  # timm's smallest

# transfer: each dataset's own layout, written by the readers' tests, at photograph size
TRANSFER = {
    "cub": lambda root: upscale(write_cub(root / "CUB_200_2011") or root, (500, 350)),
    "pet": lambda root: upscale(write_pet(root / "oxford-iiit-pet") or root, (500, 375)),
    "flowers": lambda root: upscale(write_flowers(root / "flowers-102") or root, (500, 667)),
}
for dataset, writer in TRANSFER.items():
    classify_row(f"{dataset}_swinv2_t", writer, [SWINV2_SMALLEST], trained=True)
    classify_row(f"{dataset}_vmamba_t", writer, [VMAMBA_SMALLEST, VMAMBA_SIZE], trained=True)
    classify_row(f"{dataset}_resnet50", writer, ["model.name=resnet10t"], trained=True)
    classify_row(f"{dataset}_vit_b", writer, [VIT_B_SMALLEST], trained=True)


def cifar(root: Path) -> Path:
    write_cifar10(str(root / "cifar-10-batches-py"))
    return root


# the row's patch-4 ViT at 32 x 32, 1 block of width 64 (the row's: 6 of width 512)
CIFAR_SMALLEST = "model.kwargs={img_size: 32, patch_size: 4, embed_dim: 64, depth: 1, num_heads: 2}"
classify_row("cifar10_vit_p4", cifar, [CIFAR_SMALLEST], trained=True)


def market(root: Path) -> Path:
    folder = root / "Market-1501-v15.09.15"
    return upscale(write_market(folder, train_ids=3, test_ids=2), (64, 128))


# re-ID: the TransReID-SSL ViT-S rows with one block (see REID_VIT)
for name, writer, (h, w) in (
    ("market_transreid_ssl_vit_s", market, (256, 128)),
    ("dukemtmc_transreid_ssl_vit_s", write_dukemtmc, (256, 128)),
    ("msmt17_transreid_ssl_vit_s", write_msmt17, (256, 128)),
    ("cuhk03_transreid_ssl_vit_s", write_cuhk03_np, (256, 128)),
    ("vehicleid_transreid_ssl_vit_s", write_vehicleid, (256, 256)),
):
    ROWS[name] = ("reid", writer, REID + [o.format(h=h, w=w) for o in REID_VIT])


def coco(root: Path) -> Path:
    return write_coco(root / "coco")


# Mask R-CNN on a ResNet-18-FPN, images resized to 128 (not 800), 100 proposals (not 1000-2000)
MASKRCNN_SMALL = (
    "model.kwargs={box_detections_per_img: 5, box_batch_size_per_image: 16, "
    "rpn_pre_nms_top_n_train: 100, rpn_post_nms_top_n_train: 50, "
    "rpn_pre_nms_top_n_test: 100, rpn_post_nms_top_n_test: 50}"
)
ROWS["coco_maskrcnn_r50"] = (
    "detect",
    coco,
    DENSE + ["model.backbone=resnet18", "model.min_size=128", "model.max_size=160", MASKRCNN_SMALL],
)
# ADE20K at 64 px crops (not 512). FCN: the row's ResNet, denoisers on its first stage only
# (the spectrum of a 2048-channel denoiser alone takes seconds on a CPU); SegFormer: smallest
FCN_STAGE1 = ['denoise.targets=["backbone.conv1", "backbone.layer1.*"]']
ROWS["ade20k_fcn"] = ("segment", write_ade20k, DENSE + ["data.crop_size=64"] + FCN_STAGE1)
ROWS["ade20k_fcn_r101"] = ("segment", write_ade20k, DENSE + ["data.crop_size=64"] + FCN_STAGE1)
for name in ("ade20k_segformer", "ade20k_segformer_b1"):  # MiT-b0 / b1 -> the smallest MiT
    ROWS[name] = ("segment", write_ade20k, DENSE + ["data.crop_size=64", SEGFORMER_SMALLEST])


def data_overrides(command: str, root: Path) -> list[str]:
    """What docs/reproduce.md tells the user to point at their data."""
    if command == "detect":
        return [
            f"data.train_images={root / 'train2017'}",
            f"data.train_annotations={root / 'annotations' / 'instances_train2017.json'}",
            f"data.val_images={root / 'val2017'}",
            f"data.val_annotations={root / 'annotations' / 'instances_val2017.json'}",
        ]
    if command == "segment":
        return [f"data.ade20k_root={root}"]
    return [f"data.root={root}"]


def test_every_row_has_its_config():
    for name in ROWS:
        assert packaged_config(f"{name}.yaml").is_file(), name


@pytest.fixture
def no_rendering(monkeypatch):
    """Figures are built but not laid out or rendered: rendering the plots of every report
    rewrite is most of a miniature run's time, and it is the same for every row (the
    pipelines' own tests check the PNG files)."""
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(Figure, "tight_layout", lambda self, *args, **kwargs: None)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_paper_row_runs_end_to_end(name, tmp_path, capsys, no_rendering):
    command, writer, overrides = ROWS[name]
    root = writer(tmp_path / "data")
    out = tmp_path / "run"
    argv = [command, "--config", f"{name}.yaml", "--output", str(out), "--no-progress"]
    code = main(argv + data_overrides(command, Path(root)) + overrides)
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "results.json").read_text())
    arms = report["per_seed"]["0"] if "per_seed" in report else report["summary"]
    assert {"baseline", "denoiserep"} <= set(arms), sorted(arms)
    assert report["params_fused"] == report["params_baseline"]
