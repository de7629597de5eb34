"""``dr.adapt`` on a plain, a fused and a converted model returns a plain model of the original
class with the original state-dict keys (convert -> fit -> fuse), and leaves its input alone."""

from __future__ import annotations

import pytest
import torch

import denoiserep as dr
from denoiserep.models.factory import create_model

CFG = dr.DenoiseConfig(targets="all", timesteps=100, beta_start=1e-3, beta_end=0.2)


def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_resnet", num_classes=5, in_chans=1).eval()


def batches(seed: int = 0, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 16, 16, generator=g) * 2 + 1, torch.zeros(8)) for _ in range(n)]


def test_adapt_on_a_fused_model_round_trips_to_a_plain_model_of_its_class():
    source = cnn()
    converted = dr.convert(cnn(), CFG, example_input=batches()[0][0][:2])
    dr.fit_denoisers(converted, batches(2))  # a fused model whose weights are not the source's
    fused = dr.fuse(converted)
    keys = list(source.state_dict())
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    adapted = dr.adapt(fused, batches(), CFG)
    assert type(adapted) is type(source) and not dr.is_converted(adapted)
    assert list(adapted.state_dict()) == keys
    assert sum(p.numel() for p in adapted.parameters()) == sum(
        p.numel() for p in source.parameters()
    )
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())  # input untouched
    x = batches(1)[0][0]
    with torch.no_grad():
        assert not torch.allclose(adapted(x), fused(x), atol=1e-4)  # the denoisers did something


def test_adapt_equals_convert_fit_fuse_done_by_hand():
    x = batches()
    adapted = dr.adapt(cnn(), x, CFG)
    by_hand = dr.convert(cnn(), CFG, example_input=x[0][0][:2])
    dr.fit_denoisers(by_hand, x)
    expected = dr.fuse(by_hand)
    for (k, a), (k2, b) in zip(
        adapted.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.allclose(a, b, atol=1e-6), k


def test_adapt_reads_a_converted_model_with_its_own_config_and_a_one_shot_iterator():
    x = batches()
    converted = dr.convert(cnn(), CFG, example_input=x[0][0][:2])
    from_list = dr.adapt(converted, x)
    from_iterator = dr.adapt(converted, iter(x))
    assert dr.is_converted(converted)  # not fused in place
    for a, b in zip(
        from_list.state_dict().values(), from_iterator.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="already converted with another DenoiseConfig"):
        dr.adapt(converted, x, dr.DenoiseConfig())


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ([], ValueError, "holds no batch"),
        (torch.empty(0, 1, 16, 16), ValueError, "empty tensor"),
        (3, TypeError, "tensor or an iterable of batches"),
    ],
)
def test_bad_input_is_one_line(data, error, match):
    with pytest.raises(error, match=match) as e:
        dr.adapt(cnn(), data, CFG)
    assert "\n" not in str(e.value)


def test_adapt_is_exported():
    assert "adapt" in dr.__all__ and callable(dr.adapt)
