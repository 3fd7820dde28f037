"""scripts/bench_table.py on small fabricated pytest-benchmark files: the parsing and the decisions it
makes (grouping, which time a speed-up uses, which target a group is, the policy it proposes, merging),
not any measured number."""
import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_table.py")
spec = importlib.util.spec_from_file_location("bench_table", SCRIPT)
bench_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_table)


def row(group, provider, host_ms, device_ms=None, **extra):
    info = {"provider": provider, **extra}
    if device_ms is not None:
        info["device_ms"] = device_ms
        info["device_method"] = "cuda-graph"
    return {"group": group, "name": f"test_x[{provider}]", "stats": {"median": host_ms / 1e3, "rounds": 5},
            "extra_info": info}


ATT_784_128 = "cuda bf16 nonlocal-attention B32 N784 C'128 forward+backward"
ATT_784_512 = "cuda bf16 nonlocal-attention B32 N784 C'512 forward+backward"
ATT_FP32 = "cuda fp32 nonlocal-attention B32 N784 C'512 forward+backward"
GAP = "cuda bf16 masked-gap B32 C1024 28x28 forward+backward"
STEP = "cuda icl-step resnet50 B32 224x224 bf16"

ROWS = [
    # host time says triton is slower; device time says 4x faster: the device time must be used.
    row(ATT_784_128, "reference-cuda", 1.0, 0.8), row(ATT_784_128, "triton", 2.0, 0.2, backward_variant="fused"),
    row(ATT_784_512, "reference-cuda", 1.0, 1.0), row(ATT_784_512, "triton", 1.0, 0.9, backward_variant="fused"),
    row(ATT_784_512, "triton-atomic", 1.0, 0.7), row(ATT_784_512, "triton-bmm", 1.0, 0.8),
    row(ATT_FP32, "reference-cuda", 1.0, 1.0), row(ATT_FP32, "triton", 1.0, 1.0),
    row(GAP, "roofline-cuda", 1.0, 0.1), row(GAP, "triton", 1.0, 0.2),
    row(STEP, "cam", 10.0), row(STEP, "icl", 11.0), row(STEP, "icl-reference-ops", 12.0),
]


@pytest.fixture
def results(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"benchmarks": ROWS[:8], "datetime": "2026-01-01T00:00:00",
                                 "machine_info": {"node": "gpu-box"}}))
    second.write_text(json.dumps({"benchmarks": ROWS[8:]}))
    env = tmp_path / "env.json"
    env.write_text(json.dumps({"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0"}))
    merged = tmp_path / "results.json"
    assert bench_table.main([str(first), str(second), "--merge", str(merged), "--env", str(env)]) == 0
    return merged


def test_merge_keeps_every_row_and_the_environment(results):
    data = json.loads(results.read_text())
    assert len(data["benchmarks"]) == len(ROWS)
    assert data["environment"]["gpu"] == "NVIDIA H200" and data["machine_info"]["node"] == "gpu-box"
    assert not [p for p in os.listdir(results.parent) if p.startswith(".bench_merge")]   # no temporary left


def test_tables_use_device_time_for_the_speedup(results, capsys):
    out_md = results.parent / "tables.md"
    assert bench_table.main([str(results), "-o", str(out_md)]) == 0
    text = out_md.read_text()
    assert "NVIDIA H200" in text and "torch 2.11.0" in text
    assert f"### {ATT_784_128}" in text and f"### {STEP}" in text
    lines = text.splitlines()
    header = lines[lines.index(f"### {ATT_784_128}") + 2]
    assert header.split("|")[1:4] == [" provider ", " host ms ", " device ms "]
    triton_line = next(line for line in lines[lines.index(f"### {ATT_784_128}"):] if line.startswith("| triton |"))
    assert "4.00×" in triton_line          # 0.8 / 0.2 on the device, not 1.0 / 2.0 on the host
    step_lines = lines[lines.index(f"### {STEP}"):]
    icl_line = next(line for line in step_lines if line.startswith("| icl |"))
    assert "1.09×" in icl_line             # host time against the icl-reference-ops row (no device time)


def test_targets_classify_each_group(results, capsys):
    bench_table.main([str(results), "--targets"])
    lines = capsys.readouterr().out.splitlines()
    verdicts = {line.split("|")[1].strip() + " / " + line.split("|")[2].strip(): line.split("|")[4].strip()
                for line in lines[2:]}
    assert verdicts == {
        "attention fwd+bwd N 784 C' ≤ 256 ≥ 2× / bf16 N 784 C' 128": "met",
        "attention fwd+bwd N 784 C' 512 ≥ 1.2× / bf16 N 784 C' 512": "MISSED",      # 1.11x
        "attention fp32 fwd+bwd ≥ 1× the reference / fp32 N 784 C' 512": "met",
        "masked-GAP fwd+bwd within 1.5× of read + write roofline / bf16 28x28": "MISSED",   # 2x
        "ICL step ≤ 1.15× CAM and faster than ICL on reference ops / resnet50": "met",
    }


def test_policy_proposes_the_fastest_backward(results, capsys):
    bench_table.main([str(results), "--policy"])
    text = capsys.readouterr().out
    namespace = {}
    exec(text, namespace)   # the output is a Python literal to paste into kernels/nonlocal_attention.py
    assert namespace["BACKWARD_POLICY"] == {("bfloat16", 784, 512): "atomic"}   # fused wins at C' 128


def test_non_benchmark_files_are_skipped(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert bench_table.main([str(bad)]) == 1
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


def test_dispatch_table_from_results(results, capsys):
    """--dispatch: forward+backward groups with a reference row become rows of the CUDA dispatch table,
    which wsol_fast.ops.dispatch accepts; the GPU comes from the environment block."""
    from wsol_fast.ops import dispatch

    assert bench_table.main([str(results), "--dispatch"]) == 0
    table = dispatch.validate(json.loads(capsys.readouterr().out))
    assert table["gpu"] == "NVIDIA H200"
    rows = {(r["op"], r["dtype"], tuple(r["shape"])): r["ms"] for r in table["rows"]}
    assert rows == {
        ("nonlocal_attention_map", "bfloat16", (784, 128)): {"reference": 0.8, "triton-fused": 0.2},
        ("nonlocal_attention_map", "bfloat16", (784, 512)): {"reference": 1.0, "triton-fused": 0.9,
                                                             "triton-atomic": 0.7, "triton-bmm": 0.8},
        ("nonlocal_attention_map", "float32", (784, 512)): {"reference": 1.0, "triton": 1.0},
    }   # the masked-GAP group has no reference row: left out
    assert dispatch.choose("nonlocal_attention_map", "bfloat16", (784, 512), table).variant == "atomic"
    assert dispatch.choose("nonlocal_attention_map", "float32", (784, 512), table).impl == "reference"   # a tie
