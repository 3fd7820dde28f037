"""Registration of the `wsol_fast` ops: one schema (C++ and Python copies agree), opcheck (schema,
fake, autograd registration, AOT dispatch), torch.compile(fullgraph=True) through the ops and the ICL
block, backends(), and the fallback when the C++ library is absent."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from wsol_fast.options import paper_values
import wsol_fast
from wsol_fast import ops
from wsol_fast.ops import _library
from op_testing import GAMMA_BG, GAMMA_FG, OPCHECK_SAMPLES, opcheck_samples

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
needs_cpp = pytest.mark.skipif(not _library.CPP_AVAILABLE, reason="wsol_fast._C is not built")


def _canonical(name: str, schema: str) -> str:
    return str(torch._C.parse_schema(f"{_library.NAMESPACE}::{name}{schema}"))


# ---------------------------------------------------------------- one schema, no drift

def test_python_schemas_equal_the_cpp_source():
    # Reads csrc/wsol_fast_ops.cpp, so it runs (and catches drift) even where nothing is built.
    with open(os.path.join(REPO, "csrc", "wsol_fast_ops.cpp")) as fh:
        source = fh.read()
    defs = re.findall(r'm\.def\(((?:\s*"[^"]*")+)\s*\)', source)
    cpp = {}
    for literal in defs:
        text = "".join(re.findall(r'"([^"]*)"', literal))
        name = text.split("(", 1)[0]
        cpp[name] = _canonical(name, text[len(name):])
    assert cpp == {name: _canonical(name, schema) for name, schema in _library.SCHEMAS.items()}


@needs_cpp
def test_python_schemas_equal_the_registered_cpp_schemas():
    for name, schema in _library.SCHEMAS.items():
        registered = getattr(torch.ops.wsol_fast, name).default._schema
        assert str(registered) == _canonical(name, schema), name


@needs_cpp
def test_backends_report_cpp():
    backends = wsol_fast.backends()
    assert backends["cpp"] is True and backends["default"]["cpu"] == "cpp"
    assert ops.available_impls("cpu")[0] == "cpp"


# ---------------------------------------------------------------- opcheck

@needs_cpp
@pytest.mark.parametrize("sample", [n for n in OPCHECK_SAMPLES if not n.startswith("triton-op-")])
def test_opcheck_on_cpu(sample):
    # Schema, fake kernel (shapes, dtypes and strides of the real outputs), autograd registration and
    # AOT dispatch, through the C++ kernels registered for "cpu".
    op, args = opcheck_samples("cpu")[sample]
    torch.library.opcheck(op, args)


# ---------------------------------------------------------------- torch.compile

def _attention_then_pool(f, g, zbar, x):
    attention = ops.nonlocal_attention_map(f, g, zbar, scale=0.5, impl="cpp")
    pooled, counts, dfg = ops.masked_gap(x, attention.detach(), GAMMA_FG, GAMMA_BG, impl="cpp")
    loss = (pooled * pooled).sum() + (attention * attention).sum()
    return loss, counts, dfg


@needs_cpp
def test_compile_fullgraph_traces_through_both_ops():
    torch._dynamo.reset()
    inputs = [torch.randn(2, 30, 4), torch.randn(2, 30, 4), torch.randn(2, 30), torch.randn(2, 6, 30)]
    eager_in = [t.clone().requires_grad_() for t in inputs]
    compiled_in = [t.clone().requires_grad_() for t in inputs]
    eager = _attention_then_pool(*eager_in)
    compiled = torch.compile(_attention_then_pool, fullgraph=True)(*compiled_in)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)
    eager[0].backward()
    compiled[0].backward()
    for e, c in zip(eager_in, compiled_in):
        torch.testing.assert_close(c.grad, e.grad)


def _icl_block(impl):
    icl = pytest.importorskip("wsol_fast.models.icl")
    torch.manual_seed(0)
    return icl.ICLBlock(channels=8, drop_rate=0.0, gamma_fg=0.72, gamma_bg=1.2, impl=impl, **paper_values()).train()


def _icl_loss(block, x):
    out, record = block(x)
    return out.square().mean() + record.embeddings.square().mean()


@needs_cpp
def test_compile_fullgraph_icl_block_matches_eager():
    torch._dynamo.reset()
    block = _icl_block("cpp")
    x = torch.randn(2, 8, 6, 7)
    eager = _icl_loss(block, x)
    compiled = torch.compile(lambda x: _icl_loss(block, x), fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


@needs_cpp
def test_icl_block_on_cpp_trains_like_the_reference():
    torch.manual_seed(1)
    x = torch.randn(4, 8, 7, 9)   # N = 63: a partial tile in every op
    curves = {}
    for impl in ("reference", "cpp"):
        block = _icl_block(impl)
        opt = torch.optim.SGD(block.parameters(), lr=0.1)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = _icl_loss(block, x)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[impl] = losses
    assert curves["reference"][-1] < curves["reference"][0], "the loss must move for the test to mean anything"
    torch.testing.assert_close(torch.tensor(curves["cpp"]), torch.tensor(curves["reference"]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- fallback without the C++ library

FALLBACK_SCRIPT = r"""
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, wsol_fast
    from wsol_fast import ops
    from wsol_fast.ops import reference
    import wsol_fast.ops._library            # a second import must not warn again
messages = [str(w.message) for w in caught if "C++ operators unavailable" in str(w.message)]
f, g, zbar = torch.randn(2, 9, 3, requires_grad=True), torch.randn(2, 9, 3), torch.randn(2, 9)
A = ops.nonlocal_attention_map(f, g, zbar)
A.sum().backward()
x, att = torch.randn(2, 4, 9), torch.randn(2, 9)
pooled = ops.masked_gap(x, att, 0.72, 1.2)[0]
try:
    ops.masked_gap(x, att, 0.72, 1.2, impl="cpp")
    cpp_error = None
except ValueError as exc:
    cpp_error = str(exc)
meta = torch.ops.wsol_fast.masked_gap(x.to("meta"), att.to("meta"), 0.72, 1.2)  # fake kernels still live
print(json.dumps({
    "warnings": messages, "backends": wsol_fast.backends(),
    "A_ok": torch.allclose(A, reference.nonlocal_attention_map(f, g, zbar)) and f.grad is not None,
    "pooled_ok": torch.equal(pooled, reference.masked_gap(x, att, 0.72, 1.2)[0]),
    "cpp_error": cpp_error, "meta_shapes": [list(t.shape) for t in meta],
    "schemas": {n: str(getattr(torch.ops.wsol_fast, n).default._schema) for n in wsol_fast.ops._library.SCHEMAS},
}))
"""


def test_fallback_without_cpp_library():
    env = dict(os.environ, WSOL_FAST_DISABLE_CPP="1")
    env.pop("TRITON_INTERPRET", None)   # conftest sets it; here the reference must be the CPU default
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "WSOL_FAST_DISABLE_CPP" in result["warnings"][0]
    assert result["backends"]["cpp"] is False and result["backends"]["default"]["cpu"] == "reference"
    assert result["backends"]["cpp_gemm"] is None
    assert result["A_ok"] and result["pooled_ok"]
    assert result["cpp_error"] is not None and "not available" in result["cpp_error"]
    assert result["meta_shapes"] == [[2, 3, 4], [2, 3], [2, 9]]
    # The ops defined from Python have exactly the schemas the C++ library registers.
    assert result["schemas"] == {n: _canonical(n, s) for n, s in _library.SCHEMAS.items()}


@needs_cpp
def test_the_python_schemas_are_the_cpp_librarys():
    """The schemas the fallback defines from Python (the test above) are those the C++ library registers."""
    assert {n: _canonical(n, s) for n, s in _library.SCHEMAS.items()} == \
        {n: str(getattr(torch.ops.wsol_fast, n).default._schema) for n in _library.SCHEMAS}
