"""convert / set_phase / denoise_loss / fuse / save-restore behaviour and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import denoiserep as dr
from tests.conftest import randomize_denoisers


class ReorderedNet(nn.Module):
    """Registration order (head, conv, fc2, fc1) differs from execution (conv, fc1, fc2, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.ModuleDict({"fc2": nn.Linear(8, 8), "fc1": nn.Linear(16, 8)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).relu()  # (N, 4, 2, 2)
        h = h.flatten(1)
        h = self.block["fc1"](h).relu()
        h = self.block["fc2"](h).relu()
        return self.head(h)


def example() -> torch.Tensor:
    return torch.randn(4, 2, 2, 2)


def converted(**cfg) -> nn.Module:
    torch.manual_seed(0)
    model = dr.convert(ReorderedNet(), dr.DenoiseConfig(**cfg), example())
    randomize_denoisers(model, 0.2)
    return model


def test_timesteps_follow_execution_not_registration():
    model = converted()
    t = {n: layer.t for n, layer in dr.denoise_layers(model).items()}
    assert t == {"conv": 4, "block.fc1": 3, "block.fc2": 2, "head": 1}
    assert list(dr.denoise_layers(model)) == ["conv", "block.fc1", "block.fc2", "head"]


def test_timestep_stride_and_targets():
    model = converted(timestep_stride=10, targets="linear")
    assert {n: m.t for n, m in dr.denoise_layers(model).items()} == {
        "block.fc1": 30,
        "block.fc2": 20,
        "head": 10,
    }
    model = converted(targets=["block.*"], exclude=["block.fc2"])
    assert list(dr.denoise_layers(model)) == ["block.fc1"]
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, dr.DenoiseLayer)
    assert list(dr.denoise_layers(converted(targets="conv"))) == ["conv"]


def test_layer_view_exposes_contract():
    layer = dr.denoise_layers(converted())["conv"]
    assert layer.D.shape == (2, 2)
    assert layer.schedule.betas.shape == (1000,)
    assert layer.schedule.alphas_cumprod.shape == (1000,)
    grouped = dr.convert(
        nn.Sequential(nn.Conv2d(6, 4, 1, groups=2)), dr.DenoiseConfig(), torch.randn(1, 6, 2, 2)
    )
    assert dr.denoise_layers(grouped)["0"].D.shape == (6, 3)


def test_fresh_conversion_equals_baseline_up_to_scale():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(5, 5))
    model = dr.convert(copy.deepcopy(base), dr.DenoiseConfig(), torch.randn(2, 5)).eval()
    x = torch.randn(3, 5)
    layer = dr.denoise_layers(model)["0"]
    inv_sqrt_alpha = 1 / (1 - layer.schedule.betas[0].item()) ** 0.5
    torch.testing.assert_close(model(x), base[0](x * inv_sqrt_alpha))


def test_denoiser_phase_is_baseline_and_trains_only_d():
    torch.manual_seed(0)
    base = ReorderedNet()
    model = dr.convert(copy.deepcopy(base), dr.DenoiseConfig(), example())
    randomize_denoisers(model, 0.2)
    dr.set_phase(model, "denoiser")
    model.train()
    base.train()
    x = example()
    out = model(x)
    assert torch.equal(out, base(x)), "phase denoiser must compute the baseline bit for bit"
    loss = dr.denoise_loss(model)
    assert loss.item() > 0 and set(dr.denoise_losses(model)) == set(dr.denoise_layers(model))
    loss.backward()
    for name, p in model.named_parameters():
        if name.endswith(".D"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_backbone_phase_uses_fused_weights_and_freezes_d():
    model = converted()
    dr.set_phase(model, "backbone")
    model.train()
    x = example()
    out = model(x)
    assert dr.denoise_loss(model).item() == 0.0
    out.sum().backward()
    for name, p in model.named_parameters():
        if name.endswith(".D"):
            assert not p.requires_grad and p.grad is None
        else:
            assert p.grad is not None, name
    fused = dr.fuse(model).train()
    torch.testing.assert_close(out, fused(x), rtol=1e-5, atol=1e-6)


def test_joint_phase_trains_both():
    model = converted()
    dr.set_phase(model, "joint")
    model.train()
    out = model(example())
    (out.sum() + dr.denoise_loss(model)).backward()
    assert all(p.grad is not None for p in model.parameters())
    # the task loss alone reaches D through the fused weights
    model.zero_grad()
    model(example()).sum().backward()
    assert all(m.D.grad.abs().sum() > 0 for m in dr.denoise_layers(model).values())


def test_frozen_parameters_stay_frozen():
    base = ReorderedNet()
    base.conv.bias.requires_grad_(False)
    model = dr.convert(base, dr.DenoiseConfig(), example())
    for phase in ("joint", "backbone", "denoiser", "joint"):
        dr.set_phase(model, phase)
        assert not model.conv.base_layer.bias.requires_grad
    assert not dr.fuse(model).conv.bias.requires_grad
    assert dr.fuse(model).conv.weight.requires_grad


def _forward_recording_loss_inputs(model, x, monkeypatch):
    """Run ``model(x)``; return each layer's input and the (clean tokens, noise) it drew."""
    import denoiserep.core.layer as layer_module

    inputs, drawn = {}, []
    real_randn_like = torch.randn_like

    def recording(x0, *args, **kwargs):
        eps = real_randn_like(x0, *args, **kwargs)
        drawn.append((x0.clone(), eps))
        return eps

    def hook_for(name):
        return lambda module, args: inputs.__setitem__(name, args[0].detach())

    handles = [
        m.register_forward_pre_hook(hook_for(n)) for n, m in dr.denoise_layers(model).items()
    ]
    monkeypatch.setattr(layer_module.torch, "randn_like", recording)
    try:
        model(x)
    finally:
        monkeypatch.setattr(layer_module.torch, "randn_like", real_randn_like)
        for h in handles:
            h.remove()
    return inputs, drawn


def test_loss_kinds_and_fraction(monkeypatch):
    # Values from an independent computation: each layer's input is captured by a pre-hook,
    # the clean tokens and the noise the layer drew are recorded, and the loss is recomputed
    # in float64 from docs/method.md (x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps,
    # residual D x_t - eps, D[j, i] mapping channel i to channel j).
    x = example()
    for loss, fraction in (("mse", 0.5), ("l1", 0.5), ("l1+l2", 0.5), ("mse", 1.0)):
        model = converted(loss=loss, loss_fraction=fraction).train()
        layers = dr.denoise_layers(model)
        inputs, drawn = _forward_recording_loss_inputs(model, x, monkeypatch)
        # 16 conv pixels (4 images x 2 x 2), 4 tokens for each Linear (batch of 4)
        tokens = {"conv": 16, "block.fc1": 4, "block.fc2": 4, "head": 4}
        expected_total = 0.0
        assert len(drawn) == len(layers) == 4
        for (name, layer), (x0, eps) in zip(layers.items(), drawn, strict=True):
            inp = inputs[name]
            c = layer.D.shape[0]
            rows = inp.movedim(1, -1).reshape(-1, c) if name == "conv" else inp.reshape(-1, c)
            assert rows.shape[0] == tokens[name]
            assert x0.shape == (round(fraction * tokens[name]), c), name
            assert (x0[:, None] == rows[None]).all(-1).any(-1).all(), name
            abar = torch.prod(1 - layer.schedule.betas[: layer.t]).item()
            x_t = abar**0.5 * x0.double() + (1 - abar) ** 0.5 * eps.double()
            r = x_t @ layer.D.detach().double().T - eps.double()
            value = {
                "mse": (r**2).mean(),
                "l1": r.abs().mean(),
                "l1+l2": r.abs().mean() + (r**2).mean(),
            }[loss]
            assert layer.last_loss.item() == pytest.approx(value.item(), rel=1e-5), (loss, name)
            expected_total += value.item()
        assert dr.denoise_loss(model).item() == pytest.approx(expected_total, rel=1e-5)
    model = converted(loss_weight=0.5).train()
    model(x)
    assert dr.config_of(model).loss_weight == 0.5  # lambda lives in the config only
    model.eval()
    model(x)
    assert dr.denoise_loss(model).item() == 0.0


def test_train_frozen_backbone_keeps_batchnorm_stats():
    model = converted()
    dr.set_phase(model, "denoiser")
    dr.train_frozen_backbone(model)
    before = model.bn.running_mean.clone()
    model(example())
    assert torch.equal(before, model.bn.running_mean)
    assert dr.denoise_loss(model).item() > 0


def test_fuse_leaves_model_untouched_and_is_repeatable():
    model = converted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    fused1, fused2 = dr.fuse(model), dr.fuse(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert params == [id(p) for p in model.parameters()]
    assert dr.is_converted(model) and not dr.is_converted(fused1)
    s1, s2 = fused1.state_dict(), fused2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert s1.keys() == ReorderedNet().state_dict().keys()
    model.eval()
    x = example()
    assert torch.equal(model(x), fused1.eval()(x))


def test_fuse_copy_and_pickle_right_after_a_training_forward(tmp_path):
    model = converted().train()
    model(example())
    assert dr.denoise_loss(model).requires_grad
    fused = dr.fuse(model)
    clone = copy.deepcopy(model)
    assert all(m.last_loss is None for m in dr.denoise_layers(clone).values())
    torch.save(model, tmp_path / "model.pt")
    assert dr.denoise_loss(model).requires_grad  # the original keeps its loss for backward
    dr.denoise_loss(model).backward()
    assert isinstance(fused.head, nn.Linear)


def test_explicit_mode_matches_fused():
    model = converted().eval()
    x = example()
    fused_out = model(x)
    for layer in dr.denoise_layers(model).values():
        layer.explicit = True
    torch.testing.assert_close(model(x), fused_out, rtol=1e-5, atol=1e-6)


def test_save_restore_roundtrip(tmp_path):
    model = converted(timestep_stride=2, loss="l1")
    dr.set_phase(model, "backbone")
    dr.save_converted(model, tmp_path / "ckpt")
    restored = dr.load_converted(ReorderedNet(), tmp_path / "ckpt")
    assert dr.config_of(restored) == dr.config_of(model)
    assert dr.get_phase(restored) == "backbone"
    assert {n: m.t for n, m in dr.denoise_layers(restored).items()} == {
        n: m.t for n, m in dr.denoise_layers(model).items()
    }
    a, b = dr.fuse(model).state_dict(), dr.fuse(restored).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_save_restore_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved DenoiseRep model"):
        dr.load_converted(ReorderedNet(), tmp_path)
    dr.save_converted(converted(), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="timesteps do not match"):
        dr.load_converted(nn.Sequential(nn.Linear(3, 3)), tmp_path / "ckpt")


def test_config_yaml_roundtrip_and_errors(tmp_path):
    cfg = dr.DenoiseConfig(
        targets=["blocks.*.mlp.fc*"],
        exclude=["head"],
        schedule="cosine",
        timestep_stride=3,
        loss="l1+l2",
        loss_weight=0.1,
        loss_fraction=0.25,
    )
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    assert dr.DenoiseConfig.from_yaml(path) == cfg
    assert dr.DenoiseConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValueError, match="unknown DenoiseConfig key.*'beta_ends'.*valid keys"):
        dr.DenoiseConfig.from_dict({"beta_ends": 0.1})
    for bad in (
        dict(loss="l3"),
        dict(schedule="quad"),
        dict(loss_fraction=0.0),
        dict(beta_start=0.1, beta_end=0.01),
        dict(timesteps=0),
        dict(targets=[]),
        dict(timestep_stride=0),
    ):
        with pytest.raises(ValueError):
            dr.DenoiseConfig(**bad)


class SharedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class TiedNet(nn.Module):
    """``b`` shares ``a``'s weight; ``head`` shares the embedding's (a tied LM head)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.emb = nn.Embedding(8, 8)
        self.out = nn.Linear(8, 3)
        self.b.weight = self.a.weight
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.head(self.b(self.a(x).relu()).relu()))


def test_tied_weights_are_refused_by_name_or_skipped_by_kind():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"a\.weight \(= b\.weight\).*tied weights"):
        dr.convert(TiedNet(), dr.DenoiseConfig(targets=["a", "out"]), x)
    with pytest.raises(ValueError, match=r"^target\(s\) head\.weight \(= emb\.weight\) share"):
        dr.convert(TiedNet(), dr.DenoiseConfig(targets=["head"]), x)
    with pytest.raises(ValueError, match=r"b\.weight \(= a\.weight\)"):
        dr.convert(TiedNet(), dr.DenoiseConfig(targets=["b"]), x)  # tied to a layer left plain
    with pytest.warns(UserWarning, match=r"skips 3 layer\(s\) whose weight is tied.*: a, b, head"):
        model = dr.convert(TiedNet(), dr.DenoiseConfig(), x)
    assert list(dr.denoise_layers(model)) == ["out"]


def test_layers_that_cannot_be_denoised_are_skipped_when_targets_name_a_kind(tmp_path, monkeypatch):
    # nn.MultiheadAttention reads out_proj.weight itself and never calls out_proj's forward
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    x = torch.randn(3, 5, 16)
    with pytest.warns(UserWarning, match=r"skips 2 layer\(s\) whose forward is never called"):
        model = dr.convert(model, dr.DenoiseConfig(), x[:1])
    names = ["layers.0.linear1", "layers.0.linear2", "layers.1.linear1", "layers.1.linear2"]
    assert list(dr.denoise_layers(model)) == names
    assert [layer.t for layer in dr.denoise_layers(model).values()] == [4, 3, 2, 1]
    randomize_denoisers(model)
    model.eval()
    fused = dr.fuse(model)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
    calls, forward = [], dr.DenoiseLayer.forward
    monkeypatch.setattr(
        dr.DenoiseLayer, "forward", lambda self, x: calls.append(1) or forward(self, x)
    )
    with torch.no_grad():  # the inference fast path reads linear1.weight itself: the fused one
        assert torch.equal(model(x), fused(x))
    assert not calls, "the fast path did not run"
    monkeypatch.undo()
    dr.save_converted(model, tmp_path)
    fresh = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    restored = dr.load_converted(fresh, tmp_path).eval()
    assert torch.equal(restored(x), model(x))
    # called twice: skipped, not an error; with nothing left, the error says so
    no_target = pytest.raises(ValueError, match="no target")
    with pytest.warns(UserWarning, match=r"fc \(2x\)"), no_target:
        dr.convert(SharedNet(), dr.DenoiseConfig(exclude=["unused"]), x[0, :, :4])


class AliasNet(nn.Module):
    """One Linear registered under two names (``alias`` is what forward calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.alias = self.fc
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.alias(x).relu())


def test_module_registered_twice_is_converted_and_fused_at_both_names():
    x = torch.randn(4, 8)
    model = dr.convert(AliasNet(), dr.DenoiseConfig(), x[:2])
    assert model.fc is model.alias and isinstance(model.alias, dr.DenoiseLayer)
    randomize_denoisers(model)
    model.train()
    model(x)
    assert set(dr.denoise_losses(model)) == {"fc", "head"}  # the denoiser runs via the alias
    model.eval()
    fused = dr.fuse(model)
    assert fused.fc is fused.alias and isinstance(fused.alias, nn.Linear)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
    fresh = AliasNet()
    fresh.load_state_dict(fused.state_dict())
    assert torch.equal(fresh(x), fused(x))


def test_convert_errors():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"fc \(2x\) run more than once"):
        dr.convert(SharedNet(), dr.DenoiseConfig(targets=["fc"]), x)
    with pytest.raises(ValueError, match="unused never run"):
        dr.convert(SharedNet(), dr.DenoiseConfig(targets=["unused"]), x)
    with pytest.raises(ValueError, match="matches no Linear/Conv layer"):
        dr.convert(SharedNet(), dr.DenoiseConfig(targets=["blocks.*"]), x)
    with pytest.raises(ValueError, match="needs example_input"):
        dr.convert(ReorderedNet(), dr.DenoiseConfig())
    with pytest.raises(ValueError, match="outside 1..3"):
        dr.convert(ReorderedNet(), dr.DenoiseConfig(timesteps=3), example())
    model = converted()
    with pytest.raises(ValueError, match="already converted"):
        dr.convert(model, dr.DenoiseConfig(), example())
    with pytest.raises(ValueError, match="phase must be one of"):
        dr.set_phase(model, "teacher")
    with pytest.raises(ValueError, match="not a DenoiseRep model"):
        dr.fuse(ReorderedNet())
    with pytest.raises(ValueError, match="not a DenoiseRep model"):
        dr.set_phase(ReorderedNet(), "joint")
    with pytest.raises(TypeError, match="needs an nn.Module"):
        dr.convert("resnet", dr.DenoiseConfig(), x)
    assert not dr.is_converted(ReorderedNet())


class StandardizedConv(nn.Conv2d):
    def forward(self, x):
        w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_overridden_forward_is_skipped_or_rejected():
    net = nn.Sequential(StandardizedConv(2, 2, 1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(1, 2, 2, 2)
    with pytest.warns(UserWarning, match="skips 1 layer"):
        model = dr.convert(copy.deepcopy(net), dr.DenoiseConfig(targets="all"), x)
    assert list(dr.denoise_layers(model)) == ["2"]
    with pytest.raises(ValueError, match="overrides forward"):
        dr.convert(copy.deepcopy(net), dr.DenoiseConfig(targets=["0"]), x)


@pytest.mark.parametrize("parametrization", ["weight_norm", "spectral_norm"])
def test_parametrized_weight_is_skipped_or_rejected(parametrization):
    wrap = getattr(torch.nn.utils.parametrizations, parametrization)
    net = nn.Sequential(wrap(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"skips 1 layer\(s\) whose weight is parametrized"):
        model = dr.convert(copy.deepcopy(net), dr.DenoiseConfig(targets="all"), x)
    assert list(dr.denoise_layers(model)) == ["2"]
    randomize_denoisers(model)
    model.eval()
    torch.testing.assert_close(dr.fuse(model)(x), model(x))  # fusing no longer fails
    with pytest.raises(ValueError, match=r"matches 0 \(ParametrizedLinear\), whose weight is"):
        dr.convert(copy.deepcopy(net), dr.DenoiseConfig(targets=["0"]), x)


def test_autocast_bf16_training_step():
    model = converted()
    dr.set_phase(model, "joint")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(example())
        loss = out.float().pow(2).mean() + 0.1 * dr.denoise_loss(model)
    assert out.dtype == torch.bfloat16
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert all(m.D.dtype == torch.float32 for m in dr.denoise_layers(model).values())
