"""CPU masked GAP against one plain read of the same features, per memory level (issue 24 item 5).

The fused C++ op (impl="cpp") reads x once and does three masked multiply-adds per element (three 0/1
weight rows, kept in L1). Its roofline is one read of x: `x.sum(-1)` on the same [B, C, N] tensor, which
does one add per element. The same (C 1024, or C 256 for L2, 28 x 28, fp32) at three batch sizes puts x
in each memory level of the machine: L2-resident (0.8 MB), L3-resident (12.8 MB) and DRAM (B 32: the
README's bar, 102.8 MB). Both run back to back on the same x, so x is as warm for one as for the other.
Rows record x's bytes and GB/s; docs/operators.md tabulates fused / read per level.

    pytest benchmarks/test_bench_ops_masked_gap_levels.py --benchmark-only --benchmark-columns=min,median,rounds
"""
from __future__ import annotations

import pytest
import torch

from wsol_fast import ops
from wsol_fast.ops import _library

GAMMA_FG, GAMMA_BG = 0.72, 1.2
# (level, B, C, H): x = B * C * H * H fp32 values.
LEVELS = [("l2", 1, 256, 28), ("l3", 4, 1024, 28), ("dram", 32, 1024, 28)]


@pytest.mark.skipif(not _library.CPP_AVAILABLE, reason="the C++ ops are not built (wsol_fast._C)")
@pytest.mark.parametrize("provider", ["fused", "read"])
@pytest.mark.parametrize("level, batch, channels, size", LEVELS, ids=[lv[0] for lv in LEVELS])
def test_masked_gap_vs_read(benchmark, level, batch, channels, size, provider):
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size * size)
    attention = torch.rand(batch, size * size)
    if provider == "fused":
        def call():
            return ops.masked_gap(x, attention, GAMMA_FG, GAMMA_BG, impl="cpp")[0]
    else:
        def call():
            return x.sum(-1)
    for _ in range(3):
        call()
    benchmark.group = f"cpu fp32 masked-gap vs read {level} B{batch} C{channels} {size}x{size}"
    benchmark.extra_info.update(provider=provider, level=level, bytes=x.numel() * x.element_size(),
                                threads=torch.get_num_threads())
    benchmark.pedantic(call, rounds=30, iterations=1, warmup_rounds=2)
    benchmark.extra_info["gb_per_s_at_min"] = round(x.numel() * x.element_size() / benchmark.stats.stats.min / 1e9, 2)
