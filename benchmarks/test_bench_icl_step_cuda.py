"""One training step on CUDA (forward, all losses, backward, SGD) per backbone: the ICL model with the
fused ops against a plain-CAM model of the same backbone and against the same ICL model on the
reference ops. CUDA only (skipped without a GPU); the issue's target: ICL within 1.15x of CAM and
faster than ICL on the reference ops.

Rows (provider): cam, icl (impl=None: the Triton ops), icl-reference-ops (impl="reference").
Batch 32 at 224 x 224, bf16 autocast, channels_last: the GPU training set-up. extra_info holds
eager_events_ms (CUDA events around a step: the stream's time, host gaps included), images_per_s
(from pytest-benchmark's host-inclusive median, a step ends with a synchronisation) and peak_mb.

    pytest benchmarks/test_bench_icl_step_cuda.py --benchmark-only
"""
from __future__ import annotations

import statistics

import pytest
import torch

BATCH = 32
SIZE = 224
NUM_CLASSES = 200
BACKBONES = ["vgg16", "inceptionv3", "resnet50"]
# (provider, method, impl)
ROWS = [("cam", "cam", None), ("icl", "icl", None), ("icl-reference-ops", "icl", "reference")]


def make_step(backbone: str, method: str, impl, device: str = "cuda", size: int = SIZE, batch: int = BATCH):
    """A closure running one synchronised training step of a fresh model (same seed for every row)."""
    from wsol_fast import runtime
    from wsol_fast.losses import WSOLLoss
    from wsol_fast.models import create_model

    torch.manual_seed(0)
    model = create_model(backbone, NUM_CLASSES, method=method, impl=impl).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    groups = model.parameter_groups()
    opt = torch.optim.SGD([{"params": groups["pretrained"]}, {"params": groups["new"], "lr": 0.01}],
                          lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    criterion = WSOLLoss()
    amp = torch.bfloat16 if device == "cuda" else None

    def step(sync: bool = True):
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            loss = criterion(model(x), y)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sync:
            runtime.synchronize(torch.device(device))
        return loss

    return step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA rows: no CUDA device")
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_icl_step_cuda(benchmark, backbone, row):
    provider, method, impl = row
    step = make_step(backbone, method, impl)
    for _ in range(3):   # cuDNN algorithm search, autotuning, compilation
        step()
    torch.cuda.reset_peak_memory_stats()
    step()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
    for start, end in zip(starts, ends):
        start.record()
        step(sync=False)
        end.record()
    torch.cuda.synchronize()
    benchmark.group = f"cuda icl-step {backbone} B{BATCH} {SIZE}x{SIZE} bf16"
    benchmark.extra_info.update({
        "provider": provider, "backbone": backbone, "method": method, "impl": impl or "default",
        "device": "cuda", "op": "train-step", "batch": BATCH, "input": SIZE,
        "eager_events_ms": round(statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)), 4),
        "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "gpu": torch.cuda.get_device_name(),
    })
    benchmark.pedantic(step, rounds=8, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.median, 1)
