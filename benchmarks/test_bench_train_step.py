"""One full ICL training step (forward, all losses, backward, SGD) per backbone, adding one factor at a
time: fp32 eager on the reference ops -> fused ops -> channels_last -> bf16 autocast -> torch.compile.

Input: batch 32 at 128 x 128 on the CPU, fixed here (not the default run's profile, which may change)
so that rows stay comparable across versions. The CUDA row uses the paper's 224 input and skips
without a GPU. Each row records images/s in extra_info.

    pytest benchmarks/test_bench_train_step.py --benchmark-only [--bench-full]   # 3 rows, or all 15
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from wsol_fast import runtime
from wsol_fast.losses import WSOLLoss
from wsol_fast.models import create_model

BATCH = 32
CPU_SIZE = 128
NUM_CLASSES = 10

# (name, impl, channels_last, amp dtype, compile): each row adds one factor to the one before.
CONFIGS = [
    ("fp32-eager-reference", "reference", False, None, False),
    ("fp32-eager-fused", None, False, None, False),
    ("+channels_last", None, True, None, False),
    ("+bf16-autocast", None, True, torch.bfloat16, False),
    ("+compile", None, True, torch.bfloat16, True),
]


def _make_step(backbone: str, impl, channels_last: bool, amp, compile_: bool, device: str, size: int):
    torch.manual_seed(0)
    model = create_model(backbone, NUM_CLASSES, method="icl", impl=impl).to(device)
    x = torch.randn(BATCH, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    groups = model.parameter_groups()
    opt = torch.optim.SGD([{"params": groups["pretrained"]}, {"params": groups["new"], "lr": 0.01}],
                          lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    criterion = WSOLLoss()
    fwd = torch.compile(model) if compile_ else model
    ctx = torch.autocast(device, dtype=amp) if amp is not None else contextlib.nullcontext()

    def step():
        with ctx:
            loss = criterion(fwd(x), y)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        runtime.synchronize(torch.device(device))
        return loss

    return step


# The quick set (without --bench-full): the default backbone's step on the reference ops, on the fused ops,
# and in the default run's setting (channels_last, bf16). The other rows are marked `full`.
QUICK = {("inceptionv3", "fp32-eager-reference"), ("inceptionv3", "fp32-eager-fused"),
         ("inceptionv3", "+bf16-autocast")}
BACKBONES = ["vgg16", "inceptionv3", "resnet50"]
CPU_ROWS = [pytest.param(b, c, id=f"{b}-{c[0]}", marks=() if (b, c[0]) in QUICK else pytest.mark.full)
            for b in BACKBONES for c in CONFIGS]


@pytest.mark.parametrize("backbone,config", CPU_ROWS)
def test_train_step_cpu(benchmark, backbone, config):
    name, impl, channels_last, amp, compile_ = config
    size = CPU_SIZE
    step = _make_step(backbone, impl, channels_last, amp, compile_, "cpu", size)
    step()  # warm-up (and compilation for the compile row, not timed)
    benchmark.extra_info.update({"backbone": backbone, "config": name, "batch": BATCH, "input": size,
                                 "native_bf16": runtime.cpu_has_native_bf16()})
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA row: needs a GPU")
@pytest.mark.parametrize("backbone", BACKBONES)
def test_train_step_cuda(benchmark, backbone):
    step = _make_step(backbone, None, True, torch.bfloat16, False, "cuda", 224)
    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median
