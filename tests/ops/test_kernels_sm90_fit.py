"""The Triton kernels compiled offline for sm_90 (H100, H200) with no GPU: every config the autotuner
would keep fits a block's shared memory (232,448 B), through the same specialisation path as a launch.

scripts/dev/sm90_fit.py runs in a subprocess (its kernel modules compiled, TRITON_INTERPRET=0, while
this session interprets them) with the installed triton (3.8 here; the GPU machine's 3.6 is checked by
the same script from a venv, docs/kernels.md). It records the launches of the forward and backward
launchers at the GPU run's shapes, lets the autotuner's own pruning choose the configs (the attention
pruners compile their candidates and read the compiled shared memory) and compiles every kept config
to the LLVM IR, where Triton allocates shared memory (--llir: the exact figure, half the time of a full
compile; nothing is downloaded, nothing runs).
"""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.driver", reason="this triton has no NVIDIA backend to compile for")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(REPO, "scripts", "dev", "sm90_fit.py")
SM90_MAX_SHARED = 232448   # 227 KiB per block (cudaDevAttrMaxSharedMemoryPerBlockOptin on sm_90)


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("sm90") / "fit.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, SCRIPT, "--cases", "ci", "--llir", "--workers", "2", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), f"sm90_fit.py wrote no results (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    with open(out) as handle:
        return proc, json.load(handle)


def test_compiled_for_sm90_with_the_installed_triton(fit):
    _, result = fit
    assert result["triton"] == triton.__version__
    assert result["target"] == "cuda sm_90" and result["max_shared"] == SM90_MAX_SHARED


def test_every_kept_config_fits_sm90_shared_memory(fit):
    proc, result = fit
    rows = result["rows"]
    kept = [r for r in rows if r["kept"]]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    over = [(r["case"], r["kernel"], r["config"], r["shared"]) for r in kept if r["shared"] > SM90_MAX_SHARED]
    assert not over, over
    # Each launch keeps at least one config, so the autotuner never falls back to one that cannot run.
    launches = {(r["case"], r["kernel"]) for r in rows}
    assert launches == {(r["case"], r["kernel"]) for r in kept}
    # Every kernel of both ops was compiled: forward, both fused backward variants, the bmm backward's
    # Triton kernel, masked GAP forward and backward.
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_attention_forward_kernel", "_attention_backward_kernel[fused]",
                       "_attention_backward_kernel[atomic]", "_attention_softmax_grad_kernel[bmm]",
                       "_masked_gap_forward_kernel", "_masked_gap_backward_kernel"}
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_pruner_lower_bound_never_exceeds_the_compiled_shared_memory(fit):
    # The bound only decides which configs are worth compiling: were it above a compiled figure, a
    # config that fits could be dropped without being compiled.
    _, result = fit
    bounded = [r for r in result["rows"] if r["lower_bound"] is not None]
    assert bounded
    above = [(r["case"], r["kernel"], r["config"], r["lower_bound"], r["shared"]) for r in bounded
             if r["lower_bound"] > r["shared"]]
    assert not above, above


def test_pruner_trace_estimate_never_below_the_compiled_shared_memory(fit):
    # Under torch.compile's trace nothing is compiled and this estimate alone keeps configs: were it below
    # a compiled figure, a config too large for the device could be kept.
    _, result = fit
    estimated = [r for r in result["rows"] if r.get("upper_estimate") is not None]
    assert estimated
    below = [(r["case"], r["kernel"], r["config"], r["upper_estimate"], r["shared"]) for r in estimated
             if r["upper_estimate"] < r["shared"]]
    assert not below, below
