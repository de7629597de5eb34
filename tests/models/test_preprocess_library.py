"""`preprocessing` beside timm's resolver: equal where timm resolves the model, and what the
wrapper adds (the model's own input size and channels, torchvision / Hugging Face weights)."""

import pytest
import timm
import torch
from timm.data import resolve_data_config, resolve_model_data_config

from denoiserep.models.preprocess import preprocessing

KEYS = ("mean", "std", "interpolation", "crop_pct", "input_size")


@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"])
def test_a_timm_model_gets_what_timm_resolves(arch):
    model = timm.create_model(arch, pretrained=False)
    theirs = resolve_model_data_config(model)
    ours = preprocessing(model)
    for key in KEYS:
        value = theirs[key]
        assert ours[key] == (tuple(value) if isinstance(value, list | tuple) else value), key
    cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True).to_dict()
    assert preprocessing(arch)["crop_pct"] == resolve_data_config(pretrained_cfg=cfg)["crop_pct"]


def test_timm_resolves_the_pretrained_size_where_the_model_was_built_smaller():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, in_chans=1)
    assert resolve_model_data_config(model)["input_size"] == (3, 224, 224)
    ours = preprocessing(model)
    assert ours["input_size"] == (1, 32, 32) and len(ours["mean"]) == len(ours["std"]) == 1
    assert ours["mean"][0] == pytest.approx(0.5)


def test_a_module_timm_knows_nothing_about_gets_imagenet_defaults():
    assert preprocessing(torch.nn.Conv2d(3, 3, 1))["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("crop_pct", [0.875, 0.9, 0.95, 224 / 232, 224 / 256, 1.0])
def test_eval_resize_matches_timm(crop_pct):
    """The centre-crop protocol resizes to timm's size for every crop ratio (timm floors;
    rounding gave 249 where timm gives 248 at 0.9)."""
    from timm.data import create_transform

    from denoiserep.data.augment import resize_size

    timm_resize = create_transform(224, is_training=False, crop_pct=crop_pct).transforms[0]
    expected = timm_resize.size if isinstance(timm_resize.size, int) else timm_resize.size[0]
    assert resize_size(224, crop_pct) == expected
