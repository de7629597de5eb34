"""The training profile's summary: top operators, and on a GPU the step's kernels."""

from __future__ import annotations

from types import SimpleNamespace

from torch.autograd import DeviceType

from denoiserep.bench.report import _profile_table
from denoiserep.bench.training import summarize_profile


def event(key, device, self_us, count=1, cpu_us=0.0, annotation=False):
    return SimpleNamespace(
        key=key,
        device_type=device,
        self_device_time_total=self_us,
        self_cpu_time_total=cpu_us,
        count=count,
        is_user_annotation=annotation,
    )


CPU, CUDA = DeviceType.CPU, DeviceType.CUDA
EVENTS = [  # a GPU profile: operators carry their kernels' time, and the kernels are rows too
    event("aten::mm", CPU, 900.0, count=4, cpu_us=40.0),
    event("aten::copy_", CPU, 100.0, count=10, cpu_us=80.0),
    event("aten::empty", CPU, 0.0, count=30, cpu_us=120.0),
    event("sm90_gemm_bf16", CUDA, 900.0, count=4),
    event("elementwise_kernel", CUDA, 100.0, count=10),
    event("ProfilerStep", CUDA, 5000.0, annotation=True),  # a user range, not a kernel
]


def test_gpu_profile_ranks_operators_by_their_kernel_time_and_sums_kernels_once():
    summary = summarize_profile(EVENTS, cuda=True, top=2)
    assert [(o["op"], o["self_ms"], o["calls"]) for o in summary["top_ops"]] == [
        ("aten::mm", 0.9, 4),
        ("aten::copy_", 0.1, 10),
    ]
    assert summary["kernels"] == 14 and summary["kernel_ms"] == 1.0


def test_cpu_profile_ranks_by_cpu_self_time_and_has_no_kernel_fields():
    summary = summarize_profile(EVENTS[:3], cuda=False, top=5)
    assert [o["op"] for o in summary["top_ops"]] == ["aten::empty", "aten::copy_", "aten::mm"]
    assert "kernels" not in summary and "kernel_ms" not in summary


def test_report_states_kernel_time_against_the_step_on_a_gpu_only():
    gpu_row = {"median_ms": 4.0, **summarize_profile(EVENTS, cuda=True, top=1)}
    cpu_row = {"median_ms": 4.0, **summarize_profile(EVENTS[:3], cuda=False, top=1)}
    gpu = "\n".join(_profile_table({"vit": {"variants": {"joint": gpu_row}}}))
    assert "| vit | joint | `aten::mm` | 4 | 0.9 | 22.5 |" in gpu
    assert "| vit | joint | 14 | 1.0 | 4.0 | 25 |" in gpu
    cpu = "\n".join(_profile_table({"vit": {"variants": {"joint": cpu_row}}}))
    assert "GPU kernels" not in cpu and "| vit | joint | `aten::empty` |" in cpu
