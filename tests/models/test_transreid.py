"""TransReID-SSL ViTs: the published checkpoints' key layout loads strictly, fuses exactly.

The checkpoints are written here from the names and shapes in TransReID-SSL's code
(damo-cv/TransReID-SSL: ``transreid_pytorch/model/backbones/vit_pytorch.py`` ``PatchEmbed``
with ``stem_conv=True``, ``Block``, ``TransReID``; ``dino/ours_vit.py`` ``PatchEmbed_VOLO``,
whose DINO teacher backbone ``dino/convert_model_dino.py`` saves as ``*_ics_cfs_lup.pth``;
``transreid_pytorch/model/make_model.py`` ``build_transformer`` for fine-tuned files), never
from our model's own state dict, so a renamed module fails here.
"""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

import denoiserep as dr
from denoiserep.cli import main
from denoiserep.models import create_model, load_checkpoint, preprocessing
from denoiserep.models.transreid import source_grid
from denoiserep.reid import build_reid_model
from tests.conftest import check_fused_against_reference, randomize_denoisers, rel_err
from tests.reid.test_reid_pipeline import write_market

DIMS = {"transreid_ssl_vit_small": 384, "transreid_ssl_vit_base": 768}
STEM_CONVS = ["patch_embed.conv.0", "patch_embed.conv.3", "patch_embed.conv.6"]


def published_backbone(
    dim: int, depth: int = 12, grid: tuple[int, int] = (16, 8), seed: int = 0
) -> dict[str, torch.Tensor]:
    """A LUPerson ``*_ics_cfs_lup.pth`` state dict: TransReID-SSL's names and shapes, random
    values (conv weights at He scale so that activations stay O(1) through the stem)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    def batchnorm(prefix: str, c: int) -> None:
        state[f"{prefix}.weight"] = rand(c, std=0.1, mean=1.0)
        state[f"{prefix}.bias"] = rand(c, std=0.1)
        state[f"{prefix}.running_mean"] = rand(c, std=0.1)
        state[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)

    def ibn(prefix: str, c: int = 64) -> None:  # IBN: InstanceNorm2d(c/2, affine) | BN(c/2)
        state[f"{prefix}.IN.weight"] = rand(c // 2, std=0.1, mean=1.0)
        state[f"{prefix}.IN.bias"] = rand(c // 2, std=0.1)
        batchnorm(f"{prefix}.BN", c - c // 2)

    state: dict[str, torch.Tensor] = {
        "cls_token": rand(1, 1, dim),
        "pos_embed": rand(1, 1 + grid[0] * grid[1], dim),
        "patch_embed.conv.0.weight": rand(64, 3, 7, 7, std=(2 / (3 * 49)) ** 0.5),
    }
    ibn("patch_embed.conv.1")
    state["patch_embed.conv.3.weight"] = rand(64, 64, 3, 3, std=(2 / (64 * 9)) ** 0.5)
    ibn("patch_embed.conv.4")
    state["patch_embed.conv.6.weight"] = rand(64, 64, 3, 3, std=(2 / (64 * 9)) ** 0.5)
    batchnorm("patch_embed.conv.7", 64)
    state["patch_embed.proj.weight"] = rand(dim, 64, 8, 8, std=(1 / (64 * 64)) ** 0.5)
    state["patch_embed.proj.bias"] = rand(dim)
    for b in range(depth):
        p = f"blocks.{b}."
        for norm in ("norm1", "norm2"):
            state[p + norm + ".weight"] = rand(dim, std=0.1, mean=1.0)
            state[p + norm + ".bias"] = rand(dim)
        for name, (out, inp) in {
            "attn.qkv": (3 * dim, dim),
            "attn.proj": (dim, dim),
            "mlp.fc1": (4 * dim, dim),
            "mlp.fc2": (dim, 4 * dim),
        }.items():
            state[p + name + ".weight"] = rand(out, inp)
            state[p + name + ".bias"] = rand(out)
    state["norm.weight"] = rand(dim, std=0.1, mean=1.0)
    state["norm.bias"] = rand(dim)
    return state


def finetuned(backbone: dict[str, torch.Tensor], num_ids: int = 751) -> dict[str, torch.Tensor]:
    """A fine-tuned TransReID checkpoint (``build_transformer.state_dict()``): the backbone under
    ``base.`` with TransReID's unused 1000-way ``fc``, the BNNeck and the identity classifier."""
    dim = backbone["norm.weight"].shape[0]
    state = {f"base.{k}": v for k, v in backbone.items()}
    state["base.fc.weight"] = torch.randn(1000, dim) * 0.02
    state["base.fc.bias"] = torch.zeros(1000)
    state["bottleneck.weight"] = torch.rand(dim) + 0.5
    state["bottleneck.bias"] = torch.zeros(dim)
    state["bottleneck.running_mean"] = torch.randn(dim) * 0.1
    state["bottleneck.running_var"] = torch.rand(dim) + 0.5
    state["bottleneck.num_batches_tracked"] = torch.tensor(1000)
    state["classifier.weight"] = torch.randn(num_ids, dim) * 0.001
    return state


def assert_loaded(model: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    own = model.state_dict()
    for k, v in state.items():
        assert torch.equal(own[prefix + k], v), k


# -- the published LUPerson layout ----------------------------------------------------------------
@pytest.mark.parametrize(
    "name,depth", [("transreid_ssl_vit_small", 12), ("transreid_ssl_vit_base", 2)]
)
def test_lup_checkpoint_layout_loads_strictly(tmp_path, name, depth):
    state = published_backbone(DIMS[name], depth)
    model = create_model(name, depth=depth)
    assert set(model.state_dict()) == set(state), "our names are TransReID-SSL's"
    for k, v in model.state_dict().items():
        assert v.shape == state[k].shape, k
    path = tmp_path / "vit_ics_cfs_lup.pth"
    torch.save(state, path)
    model = create_model(name, checkpoint=path, depth=depth).eval()
    assert_loaded(model, state)
    assert model(torch.randn(2, 3, 256, 128)).shape == (2, DIMS[name])


def test_registered_with_timm_and_its_preprocessing():
    model = timm.create_model("transreid_ssl_vit_small", depth=1)
    assert model.patch_embed.grid_size == (16, 8) and model.pos_embed.shape == (1, 129, 384)
    assert model.num_classes == 0 and isinstance(model.head, nn.Identity)
    for pre in (preprocessing(model), preprocessing("transreid_ssl_vit_small")):
        assert pre["mean"] == pre["std"] == (0.5, 0.5, 0.5)
        assert pre["input_size"] == (3, 256, 128)
    with pytest.raises(ValueError, match="no downloadable weights"):
        create_model("transreid_ssl_vit_small", pretrained=True)


def test_source_grid_prefers_the_models_aspect_ratio():
    assert source_grid(128, (24, 8)) == (16, 8)  # LUPerson 256 x 128 -> a 384 x 128 model
    assert source_grid(128, (16, 8)) == (16, 8)
    assert source_grid(196, (16, 8)) == (14, 14)  # ImageNet 224: tie broken to the square
    assert source_grid(2, (16, 8)) == (2, 1)


def test_position_embeddings_of_another_grid_are_resampled(tmp_path):
    state = published_backbone(384, depth=1)
    torch.save(state, tmp_path / "lup.pth")
    model = create_model(
        "transreid_ssl_vit_small", checkpoint=tmp_path / "lup.pth", depth=1, img_size=(384, 128)
    )
    assert model.patch_embed.grid_size == (24, 8)
    want = resample_abs_pos_embed(state["pos_embed"], new_size=(24, 8), old_size=(16, 8))
    torch.testing.assert_close(model.pos_embed.data, want, rtol=0, atol=0)
    assert torch.equal(model.pos_embed.data[:, 0], state["pos_embed"][:, 0])  # class token's


def test_checkpoint_without_the_stem_is_refused_in_one_line(tmp_path):
    state = {k: v for k, v in published_backbone(384, 1).items() if ".conv." not in k}
    state["patch_embed.proj.weight"] = torch.randn(384, 3, 16, 16)  # vit_small_cfs_lup.pth
    torch.save(state, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="no convolutional stem"):
        create_model("transreid_ssl_vit_small", checkpoint=tmp_path / "plain.pth", depth=1)


def test_dino_teacher_checkpoint_loads_with_key_and_remap(tmp_path):
    """An unconverted DINO checkpoint: ``teacher`` holds ``backbone.*`` and the DINO head."""
    backbone = published_backbone(384, depth=1)
    teacher = {f"backbone.{k}": v for k, v in backbone.items()}
    teacher["head.mlp.0.weight"] = torch.randn(2048, 384)
    teacher["head.last_layer.weight_g"] = torch.ones(65536, 1)
    torch.save({"teacher": teacher, "student": teacher, "epoch": 100}, tmp_path / "dino.pth")
    model = create_model(
        "transreid_ssl_vit_small",
        checkpoint=tmp_path / "dino.pth",
        checkpoint_key="teacher",
        checkpoint_remap=[["^backbone\\.", ""]],
        depth=1,
    )
    assert_loaded(model, backbone)


# -- fine-tuned TransReID checkpoints -------------------------------------------------------------
#: ``model.checkpoint_remap`` for a fine-tuned file loaded as the backbone: its heads become
#: ``head.*`` keys, which the head-less backbone does not use (one logged line).
FINETUNED_BACKBONE_REMAP = [["^base\\.", ""], ["^(fc|bottleneck|classifier)\\.", "head.\\1."]]
#: ... and loaded into our ReIDModel whole: BNNeck and classifier load too.
FINETUNED_REID_REMAP = [["^base\\.fc\\.", "classifier.fc."], ["^base\\.", "backbone."]]


def test_finetuned_checkpoint_loads_as_backbone_with_remap(tmp_path, caplog):
    backbone = published_backbone(384, depth=1)
    torch.save(finetuned(backbone), tmp_path / "transreid.pth")
    with pytest.raises(ValueError, match="unexpected"):  # heads beside base.*: not by itself
        create_model("transreid_ssl_vit_small", checkpoint=tmp_path / "transreid.pth", depth=1)
    model = create_model(
        "transreid_ssl_vit_small",
        checkpoint=tmp_path / "transreid.pth",
        checkpoint_remap=FINETUNED_BACKBONE_REMAP,
        depth=1,
    )
    assert_loaded(model, backbone)
    assert "not used" in caplog.text
    # the backbone alone under base. (no heads): the common prefix is stripped by itself
    torch.save({f"base.{k}": v for k, v in backbone.items()}, tmp_path / "base_only.pth")
    model = create_model("transreid_ssl_vit_small", checkpoint=tmp_path / "base_only.pth", depth=1)
    assert_loaded(model, backbone)


def test_finetuned_checkpoint_loads_into_the_reid_model_whole(tmp_path):
    backbone = published_backbone(384, depth=1)
    state = finetuned(backbone, num_ids=751)
    torch.save(state, tmp_path / "transreid.pth")
    model = build_reid_model("transreid_ssl_vit_small", num_classes=751, depth=1)
    load_checkpoint(model, tmp_path / "transreid.pth", remap=FINETUNED_REID_REMAP)
    assert_loaded(model.backbone, backbone)
    for k in ("bottleneck.weight", "bottleneck.running_var", "classifier.weight"):
        assert torch.equal(model.state_dict()[k], state[k]), k


# -- DenoiseRep on it -----------------------------------------------------------------------------
CASES = [
    ("transreid_ssl_vit_small", 2, torch.float32, 1e-5),
    ("transreid_ssl_vit_small", 2, torch.float64, 1e-10),
    ("transreid_ssl_vit_base", 1, torch.float32, 1e-5),
]


@pytest.mark.parametrize("name,depth,dtype,tol", CASES, ids=lambda v: str(v).split(".")[-1])
def test_converts_and_fuses_exactly(tmp_path, name, depth, dtype, tol):
    """Every conv / linear, the stem's included, is denoised; the fused model equals the explicit
    reference (A_t applied before each original layer) and the converted model in eval."""
    path = tmp_path / "lup.pth"
    torch.save(published_backbone(DIMS[name], depth), path)
    # 128 x 64 crops (the checkpoint's 16 x 8 position embeddings resampled to 8 x 4): the same
    # layers as at 256 x 128, a quarter of the CPU time
    original = create_model(name, checkpoint=path, depth=depth, img_size=(128, 64))
    original = original.to(dtype).eval()
    x = torch.randn(2, 3, 128, 64, dtype=dtype)
    converted = dr.convert(copy.deepcopy(original), dr.DenoiseConfig(targets="all"), x)
    layers = dr.denoise_layers(converted)
    embedding = {n for n, m in original.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert set(layers) == embedding and len(layers) == 4 + 4 * depth
    assert set(STEM_CONVS) | {"patch_embed.proj"} <= set(layers)
    assert sorted(layer.t for layer in layers.values()) == list(range(1, len(layers) + 1))
    assert layers["patch_embed.conv.0"].t == len(layers)  # executed first
    randomize_denoisers(converted, strength=0.1)
    fused = dr.fuse(converted).eval()
    out = check_fused_against_reference(original, converted, fused, x, tol)
    assert rel_err(out["converted"], out["fused"]) < tol


# -- the re-ID pipeline ---------------------------------------------------------------------------
@pytest.mark.slow
def test_reid_cli_loads_the_lup_checkpoint(tmp_path, capsys, monkeypatch):
    """``denoiserep reid`` with model.name / model.checkpoint: the ViT-S layout with 1 block
    (12 blocks take minutes on two CPU cores), untrained baseline, on 32 x 16 crops of the tiny
    Market fixture (position embeddings resampled 16 x 8 -> 2 x 1)."""
    # the run's per-layer eigenvalue report (one 1536 x 1536 eigvals for fc2) is not checked here
    monkeypatch.setattr("denoiserep.engine.arms.ArmRunner._spectrum", lambda *a, **k: None)
    root = write_market(tmp_path / "market")
    torch.save(published_backbone(384, depth=1), tmp_path / "vit_small_ics_cfs_lup.pth")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {name: market1501, height: 32, width: 16, preload: true, pad: 1, "
        "num_instances: 2}\n"
        "model: {kwargs: {img_size: [32, 16], depth: 1}}\n"
        "eval: {batch_size: 64, max_rank: 10}\n"
        "baseline: {epochs: 0}\n"
        "finetune: {epochs: 1, batch_size: 8, lr: 1.0e-4, phases: joint, denoiser_epochs: 0}\n"
        "denoise: {targets: all, loss_weight: 0.1}\n"
        "seeds: [0]\nlatency_repeats: 1\n"
        "arms: [denoiserep]\n"
    )
    out = tmp_path / "run"
    code = main(
        [
            "reid",
            "--config",
            str(config),
            "--output",
            str(out),
            "--no-progress",
            f"data.root={root}",
            "model.name=transreid_ssl_vit_small",
            f"model.checkpoint={tmp_path / 'vit_small_ics_cfs_lup.pth'}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "results.json").read_text())
    assert set(report["summary"]) == {"baseline", "denoiserep"}
    assert len(report["strength"]) == 4 + 4 + 1  # stem + proj, 4 linears, classifier
    assert report["params_baseline"] == report["params_fused"]
    assert report["summary"]["denoiserep"]["max_abs_diff_fused_unfused"]["mean"] < 1e-3
