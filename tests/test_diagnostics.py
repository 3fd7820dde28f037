"""wsol_fast.diagnostics on hand-made block records: the mask fractions, empty masks, drops and the hinge."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from wsol_fast import diagnostics
from wsol_fast.models.outputs import BlockRecord


def test_icl_record_by_hand():
    # 2 samples of 4 x 4 = 16 positions; sample 1 has an empty M_dfg
    counts = torch.tensor([[8, 4, 4], [12, 0, 4]])
    e = torch.zeros(2, 3, 2)
    e[0, 2, 0] = 3.0                       # ||e_dfg - e_fg|| = 0, ||e_dfg - e_bg|| = 3: 0 - 3 + 1 < 0
    e[1, 0, 0] = 3.0                       # 3 - 0 + 1 > 0: hinge active
    rec = BlockRecord(attention=torch.zeros(2, 4, 4), embeddings=e, counts=counts,
                      dropped=torch.tensor([True, False]))
    stats = diagnostics.block_stats(SimpleNamespace(blocks=[rec]), margin=1.0)
    assert stats.tolist() == [pytest.approx([20 / 32, 4 / 32, 8 / 32, 0.5, 0.5, 0.5])]
    columns = diagnostics.as_columns(stats)
    assert columns["diag_b0_fg"] == 0.625 and columns["diag_b0_empty"] == 0.5 and len(columns) == 6
    assert diagnostics.summary(stats) == "masks fg/dfg/bg b0 0.62/0.12/0.25"


def test_adl_record_and_warnings():
    drop = torch.zeros(1, 2, 2, dtype=torch.bool)          # nothing dropped: M_fg full
    rec = BlockRecord(attention=torch.zeros(1, 2, 2), drop_mask=drop, dropped=torch.tensor([True]))
    stats = diagnostics.block_stats(SimpleNamespace(blocks=[rec]), margin=1.0)
    assert stats.tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]
    assert diagnostics.summary(stats).endswith("WARNING: b0 M_fg full")
    assert diagnostics.block_stats(SimpleNamespace(blocks=[]), 1.0) is None
    assert diagnostics.as_columns(None) == {} and diagnostics.summary(None) == ""
