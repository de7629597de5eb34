"""The CUDA checks of ``test_cuda.py`` that no other test runs, run on CPU.

No GPU has been lent to this project's CI, so ``test_cuda.py`` is skipped there; running its
helpers on CPU keeps their logic working (imports, shapes, the number of target layers, the
bounds) until a GPU runs them, and checks the same claims for CPU (bf16 autocast included).
"""

from __future__ import annotations

import pytest

from tests.core.test_cuda import (
    MODELS,
    check_bf16_joint_step,
    check_bf16_vs_float32,
    check_fused_equals_eval,
)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cpu_fused_equals_eval_bit_for_bit(name):
    check_fused_equals_eval(name, "cpu")


@pytest.mark.parametrize("batch_loss", [False, True])
def test_cpu_bf16_autocast_joint_step(batch_loss):
    check_bf16_joint_step("cpu", batch_loss)


def test_cpu_bf16_training_close_to_float32(tmp_path):
    measured = check_bf16_vs_float32("cpu", tmp_path)
    # the comparison must see bf16 at all: identical runs would mean amp did nothing
    assert measured["D"] > 0 and measured["rest"] > 0, measured
