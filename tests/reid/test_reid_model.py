"""BoT model (BNNeck, last stride), triplet loss, augmentation and feature evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.reid import evaluate_full, re_ranking
from denoiserep.reid.features import distance_matrix, evaluate_reid, extract_features
from denoiserep.reid.model import ReIDModel, build_reid_model, set_last_stride
from denoiserep.reid.step import ReIDImageDataset, batch_hard_triplet, random_erasing

# Points a=(0,0), b=(3,0) of identity 0 and c=(0,4), d=(0,1) of identity 1.
FEATS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 1.0]])
PIDS = torch.tensor([0, 0, 1, 1])
# Hardest positive / negative per anchor: a: b=3 / d=1; b: a=3 / d=sqrt(10); c: d=3 / a=4;
# d: c=3 / a=1.
D_AP = [3.0, 3.0, 3.0, 3.0]
D_AN = [1.0, math.sqrt(10), 4.0, 1.0]


def test_batch_hard_triplet_hand_computed():
    loss, d_ap, d_an = batch_hard_triplet(FEATS, PIDS, margin=0.3)
    assert d_ap.tolist() == pytest.approx(D_AP, abs=1e-5)
    assert d_an.tolist() == pytest.approx(D_AN, abs=1e-5)
    expected = (2.3 + (3.0 - math.sqrt(10) + 0.3) + 0.0 + 2.3) / 4  # relu(d_ap - d_an + m)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    soft, _, _ = batch_hard_triplet(FEATS, PIDS, margin=None)
    softplus = [math.log1p(math.exp(p - n)) for p, n in zip(D_AP, D_AN, strict=True)]
    assert soft.item() == pytest.approx(sum(softplus) / 4, abs=1e-5)


def test_triplet_gradient_is_finite_for_identical_features():
    feats = torch.zeros(4, 3, requires_grad=True)
    loss, _, _ = batch_hard_triplet(feats, PIDS)
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    with pytest.raises(ValueError, match="negative"):
        batch_hard_triplet(FEATS, torch.zeros(4, dtype=torch.long))


def _layer4_size(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    shapes = []
    handle = model.backbone.layer4.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    return tuple(shapes[0][-2:])


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18", "resnet26d"])
def test_last_stride_one_halves_the_output_stride(name):
    x = torch.randn(1, 3, 64, 64)
    assert _layer4_size(build_reid_model(name, 3), x) == (2, 2)  # output stride 32
    model = build_reid_model(name, 3, last_stride=1)
    assert _layer4_size(model, x) == (4, 4)  # output stride 16
    assert model(x).shape == (1, model.feat_dim)


def test_last_stride_needs_a_resnet():
    vit = build_reid_model("vit_tiny_patch16_224", 3, img_size=16, patch_size=8, depth=1)
    with pytest.raises(ValueError, match="layer4"):
        set_last_stride(vit.backbone)


def test_bnneck_outputs_and_frozen_bias():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = ReIDModel(backbone, 6, num_classes=5)
    x = torch.randn(8, 3, 2, 2)
    scores, global_feat = model(x)
    assert scores.shape == (8, 5) and global_feat.shape == (8, 6)
    assert model.classifier.bias is None and not model.bottleneck.bias.requires_grad
    model.eval()
    feat = model(x)
    bn = model.bottleneck
    expected = (backbone(x) - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight
    torch.testing.assert_close(feat, expected)
    model.neck_feat = "before"
    torch.testing.assert_close(model(x), backbone(x))
    assert len(model(x, return_logits=True)) == 2


def test_convert_all_wraps_the_classifier_last():
    model = build_reid_model("vit_tiny_patch16_224", 4, img_size=16, patch_size=8, depth=1)
    x = {"x": torch.randn(2, 3, 16, 16), "return_logits": True}
    converted = dr.convert(model, dr.DenoiseConfig(targets="all"), example_input=x)
    layers = dr.denoise_layers(converted)
    assert layers["classifier"].t == 1 and layers["backbone.patch_embed.proj"].t == len(layers)
    model = build_reid_model("vit_tiny_patch16_224", 4, img_size=16, patch_size=8, depth=1)
    cfg = dr.DenoiseConfig(targets="all", exclude=["classifier"])
    assert "classifier" not in dr.denoise_layers(dr.convert(model, cfg, example_input=x))


def test_random_erasing_is_reproducible_and_fills_one_rectangle():
    x = torch.ones(16, 3, 10, 10)
    a = random_erasing(x, torch.Generator().manual_seed(3), prob=1.0)
    b = random_erasing(x, torch.Generator().manual_seed(3), prob=1.0)
    assert torch.equal(a, b)
    for img in a:
        erased = img[0] == 0
        assert torch.equal(erased, (img == 0).all(0))  # same pixels in every channel
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert erased.sum() == h * w > 0  # one full rectangle
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
    assert torch.equal(random_erasing(x, torch.Generator(), prob=0.0), x)


def _write_images(folder, pixels):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (value, pid, cam) in enumerate(pixels):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path)
        items.append((str(path), pid, cam))
    return items


def test_evaluate_reid_matches_evaluate_full_on_known_features(tmp_path):
    # Feature = mean pixel value (a 1x1 "model"); query 10 and 200, gallery around them.
    q, g = np.array([10.0, 200.0]), np.array([12.0, 190.0, 100.0, 15.0])
    query = _write_images(tmp_path / "q", [(10, 1, 0), (200, 2, 0)])
    gallery = _write_images(tmp_path / "g", [(12, 1, 1), (190, 2, 1), (100, 1, 1), (15, 3, 1)])
    size, mean, std = (4, 4), [0.0] * 3, [1 / 255] * 3  # images keep their 0..255 values
    q_set = ReIDImageDataset(query, size, mean, std, preload=True)
    g_set = ReIDImageDataset(gallery, size, mean, std)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1, bias=False))
    nn.init.constant_(model[2].weight, 1 / 3)
    feats = extract_features(model, g_set, batch_size=3, flip=True)
    torch.testing.assert_close(feats[:, 0], torch.tensor(g, dtype=torch.float32))
    labels = (q_set.pids, g_set.pids, q_set.camids, g_set.camids)

    metrics = evaluate_reid(model, q_set, g_set, normalize=False, max_rank=4)
    distmat = np.abs(q[:, None] - g[None, :])
    assert metrics["mAP"] == pytest.approx(100 * evaluate_full(distmat, *labels, 4)["mAP"])
    assert metrics["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2 / 2 + 50)  # q1: ranks 1, 3
    assert metrics["cmc"] == pytest.approx([100.0, 100.0, 100.0, 100.0])
    assert metrics["mINP"] == pytest.approx(100 * (2 / 3 + 1) / 2)

    rerank = {"k1": 2, "k2": 1, "lambda_value": 0.3}
    metrics = evaluate_reid(model, q_set, g_set, normalize=False, rerank=rerank, max_rank=4)
    qq, gg = np.abs(q[:, None] - q[None, :]), np.abs(g[:, None] - g[None, :])
    expected = evaluate_full(re_ranking(distmat, qq, gg, **rerank), *labels, 4)
    assert metrics["mAP"] == pytest.approx(100 * expected["mAP"])

    unlabelled = q_set.without_labels()
    assert (unlabelled.pids == -1).all() and (unlabelled.camids == -1).all()
    assert torch.equal(unlabelled[1][0], q_set[1][0]) and q_set.pids.tolist() == [1, 2]


def test_distance_matrix_hand_values():
    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[0.0, 0.0], [6.0, 8.0], [-3.0, -4.0]])
    assert distance_matrix(a, b)[0].tolist() == pytest.approx([5.0, 5.0, 10.0])
    assert distance_matrix(a, b[1:], "cosine")[0].tolist() == pytest.approx([0.0, 2.0])
    with pytest.raises(ValueError, match="distance must be one of"):
        distance_matrix(a, b, "manhattan")
