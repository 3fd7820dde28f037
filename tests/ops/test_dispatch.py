"""Dispatch by measurement (wsol_fast/ops/dispatch.py): the choice per op, dtype and shape from a table of
measured times, the nearest-shape rule for unmeasured shapes, what resolve_impl and backends() do with it,
and that every path the table can choose gives the reference's values and gradients (Triton paths run in
the interpreter on CPU tensors)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import wsol_fast  # noqa: E402
import wsol_fast.ops as ops  # noqa: E402
from wsol_fast.ops import dispatch, reference  # noqa: E402
from op_testing import assert_close_to_reference  # noqa: E402

ATTENTION = "nonlocal_attention_map"


def table(*rows):
    return dispatch.validate({"gpu": "test GPU", "date": "2026-01-01", "source": "fabricated",
                              "shape_key": {ATTENTION: ["N", "C'"], "masked_gap": ["C", "N"]}, "rows": list(rows)})


def row(op, dtype, shape, **ms):
    return {"op": op, "dtype": dtype, "shape": list(shape), "ms": {k.replace("_", "-"): v for k, v in ms.items()}}


TABLE = table(
    row(ATTENTION, "bfloat16", (784, 128), reference=1.0, triton=2.0),
    row(ATTENTION, "bfloat16", (3136, 128), reference=2.0, triton=1.0),
    row(ATTENTION, "bfloat16", (784, 512), reference=1.0, triton=0.9, triton_bmm=0.5),
    row(ATTENTION, "float32", (784, 128), reference=1.0, triton=1.0),     # a tie: the first listed
    row("masked_gap", "float32", (1024, 784), reference=3.0, triton=1.0),
)


@pytest.mark.parametrize("op, dtype, shape, impl, variant, measured, exact", [
    (ATTENTION, torch.bfloat16, (784, 128), "reference", None, (784, 128), True),
    (ATTENTION, torch.bfloat16, (3136, 128), "triton", None, (3136, 128), True),
    (ATTENTION, torch.bfloat16, (784, 512), "triton", "bmm", (784, 512), True),   # the cuBLAS-bmm hybrid
    (ATTENTION, torch.float32, (784, 128), "reference", None, (784, 128), True),
    # unmeasured: the nearest measured shape in log space; (2000, 128) is nearer 3136 than 784
    (ATTENTION, torch.bfloat16, (2000, 128), "triton", None, (3136, 128), False),
    (ATTENTION, torch.bfloat16, (1500, 128), "reference", None, (784, 128), False),
    (ATTENTION, torch.bfloat16, (784, 1024), "triton", "bmm", (784, 512), False),
    (ATTENTION, torch.float32, (3136, 1024), "reference", None, (784, 128), False),   # the dtype's only row
    (ATTENTION, torch.float16, (3136, 128), "triton", None, (3136, 128), False),      # fp16: bf16's rows
    ("masked_gap", torch.float32, (512, 3136), "triton", None, (1024, 784), False),
])
def test_choose(op, dtype, shape, impl, variant, measured, exact):
    choice = dispatch.choose(op, dtype, shape, TABLE)
    assert (choice.impl, choice.variant, choice.measured, choice.exact) == (impl, variant, measured, exact)


def test_choose_without_rows_gives_none():
    assert dispatch.choose(ATTENTION, torch.float64, (784, 128), TABLE) is None      # caller's default
    assert dispatch.choose("masked_gap", torch.bfloat16, (1024, 784), TABLE) is None


def test_equidistant_shapes_take_the_first_row():
    t = table(row(ATTENTION, "float32", (400, 128), triton=1.0, reference=2.0),
              row(ATTENTION, "float32", (1600, 128), reference=1.0, triton=2.0))
    assert dispatch.choose(ATTENTION, torch.float32, (800, 128), t).impl == "triton"


@pytest.mark.parametrize("bad, message", [
    ({"rows": []}, "missing 'gpu'"),
    ({"gpu": "x", "date": "d", "source": "s", "rows": [row("conv", "float32", (1, 1), reference=1.0)]}, "op must be"),
    ({"gpu": "x", "date": "d", "source": "s", "rows": [row(ATTENTION, "float32", (0, 1), reference=1.0)]}, "shape"),
    ({"gpu": "x", "date": "d", "source": "s", "rows": [row(ATTENTION, "float32", (8, 1), cudnn=1.0)]}, "ms must"),
])
def test_validate_rejects_malformed_tables(bad, message):
    with pytest.raises(ValueError, match=message):
        dispatch.validate(bad)


def test_committed_table_names_gpu_date_and_covers_both_ops():
    committed = dispatch.load_table()
    assert committed["gpu"] and committed["date"] and committed["source"]
    assert {r["op"] for r in committed["rows"]} == set(dispatch.OPS)
    for r in committed["rows"]:
        assert "reference" in r["ms"], r   # every decision is against plain PyTorch


def test_resolve_impl_on_cuda_follows_the_table(monkeypatch):
    monkeypatch.setattr(dispatch, "TABLE", TABLE)
    monkeypatch.setattr(ops, "available_impls", lambda device: ["triton", "reference"]
                        if torch.device(device).type == "cuda" else ["cpp", "reference"])
    assert ops.resolve_impl(None, "cuda", ATTENTION, torch.bfloat16, (784, 128)) == "reference"
    assert ops.resolve_impl(None, "cuda", ATTENTION, torch.bfloat16, (3136, 100)) == "triton"
    assert ops.resolve_impl(None, "cuda", ATTENTION, torch.float64, (784, 128)) == "triton"   # no rows: default
    assert ops.resolve_impl(None, "cuda") == "triton"                                        # no op given
    assert ops.resolve_impl("triton", "cuda", ATTENTION, torch.bfloat16, (784, 128)) == "triton"   # forced
    assert ops.resolve_impl(None, "cpu", ATTENTION, torch.bfloat16, (784, 128)) == "cpp"     # CPU: no table
    # A choice that is not available here falls back to the device's default.
    monkeypatch.setattr(ops, "available_impls", lambda device: ["reference"])
    assert ops.resolve_impl(None, "cuda", "masked_gap", torch.float32, (1024, 784)) == "reference"


def test_backends_reports_the_table_and_each_choice(monkeypatch):
    monkeypatch.setattr(dispatch, "TABLE", TABLE)
    report = wsol_fast.backends()["dispatch"]
    assert (report["gpu"], report["date"], report["source"]) == ("test GPU", "2026-01-01", "fabricated")
    assert report["cuda"][ATTENTION]["bfloat16"] == [
        {"shape": {"N": 784, "C'": 128}, "impl": "reference"}, {"shape": {"N": 3136, "C'": 128}, "impl": "triton"},
        {"shape": {"N": 784, "C'": 512}, "impl": "triton-bmm"}]
    assert report["cuda"]["masked_gap"]["float32"] == [{"shape": {"C": 1024, "N": 784}, "impl": "triton"}]


def _triton_runs_here():
    try:
        return "triton" in ops.available_impls("cpu")
    except Exception:
        return False


@pytest.mark.skipif(not _triton_runs_here(), reason="Triton's interpreter is not active (TRITON_INTERPRET=1 "
                    "before the kernel modules are imported) or triton is missing: the Triton paths cannot run")
@pytest.mark.parametrize("implementation", sorted(dispatch.IMPLEMENTATIONS))
def test_every_dispatch_path_matches_the_reference(implementation, monkeypatch):
    """Each implementation the table can choose, made the fastest at the call's shape, gives the values
    and gradients of the fp64 reference (the Triton variants reach the kernels through backward_variant)."""
    from wsol_fast.kernels import nonlocal_attention as kernels

    monkeypatch.setattr(kernels, "FORCE_BACKWARD", None)
    monkeypatch.setattr(kernels, "BACKWARD_POLICY", {})
    # bmm is chosen only from C' = BMM_MIN_HEAD_DIM on (its O(N^2) buffers), whatever a table says.
    shape = (21, kernels.BMM_MIN_HEAD_DIM) if implementation == "triton-bmm" else (37, 24)
    ms = {name: 2.0 for name in dispatch.IMPLEMENTATIONS}
    ms[implementation] = 1.0
    monkeypatch.setattr(dispatch, "TABLE", table(row(ATTENTION, "float32", shape, **{k.replace("-", "_"): v
                                                                                       for k, v in ms.items()})))
    choice = dispatch.choose(ATTENTION, torch.float32, shape)
    assert choice.exact and (choice.impl, choice.variant) == dispatch.IMPLEMENTATIONS[implementation]
    if choice.impl == "triton":
        assert kernels.backward_variant(torch.float32, *shape) == (choice.variant or "fused")
    f, g, zbar = torch.randn(2, *shape), torch.randn(2, *shape) / shape[1] ** 0.5, torch.randn(2, shape[0])
    grad_a = torch.randn(2, shape[0])
    outputs = []
    for dtype in (torch.float32, torch.float64):
        leaves = [t.detach().to(dtype).clone().requires_grad_() for t in (f, g, zbar)]
        if dtype == torch.float32:   # the path under test (the CPU call names it: no table on CPU)
            a = ops.nonlocal_attention_map(*leaves, 0.3, impl=choice.impl)
        else:
            a = reference.nonlocal_attention_map(*leaves, 0.3)
        a.backward(grad_a.to(dtype))
        outputs.append((a.detach(), *(t.grad for t in leaves)))
    leaves = [t.detach().clone().requires_grad_() for t in (f, g, zbar)]
    a32 = reference.nonlocal_attention_map(*leaves, 0.3)
    a32.backward(grad_a)
    ref32 = (a32.detach(), *(t.grad for t in leaves))
    for name, out, same, exact in zip(("A", "df", "dg", "dzbar"), outputs[0], ref32, outputs[1]):
        assert_close_to_reference(name, out, same, exact, 1e-6, 1e-6)


def test_missing_table_leaves_the_device_default(monkeypatch, tmp_path):
    monkeypatch.setattr(dispatch, "TABLE_PATH", str(tmp_path / "absent.json"))
    with pytest.warns(RuntimeWarning, match="no CUDA dispatch table"):
        empty = dispatch._load_or_empty()
    assert empty["rows"] == [] and dispatch.choose(ATTENTION, torch.bfloat16, (784, 128), empty) is None
