"""Offline compiles of the Triton kernels for a GPU that is not here (sm_90 by default), through the
same specialisation path as a launch.

    with offline_target():                                  # triton's active driver -> a stand-in for sm_90
        with captured_launches(attention, KERNELS) as launches:
            attention.nonlocal_attention_forward(f, g, zbar, scale)   # CPU tensors; records, launches nothing
        for launch in launches:
            for config in launch.kept_configs():            # the autotuner's own pruning of this launch
                print(config, launch.resources(config))    # compiled: shared memory, registers, spills

`launch.compile(config)` is what a launch does before it runs: the autotuner's `fn.warmup` with the
launch's own arguments, so Triton's binder specialises them exactly as on the GPU (pointer alignment,
strides equal to 1 or divisible by 16, constexprs) and `triton.compile` runs every stage to the cubin
(ptxas ships inside the triton wheel). The kernel modules must be imported compiled (TRITON_INTERPRET
unset or 0), and tensors should have the GPU run's shapes: N, strides and B are specialised on their
divisibility by 16. Nothing runs: no device is needed, and none is touched.

Used by tests/ops/test_kernels_sm90_fit.py (through scripts/dev/sm90_fit.py) and by the pruners in
nonlocal_attention.py, which compile each candidate and read its shared memory on any target, this one
included. Works with triton 3.6 (the GPU machine's) and 3.8 (this project's CPU CI).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import types

# sm_90 (H100, H200): 227 KiB of shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# 64 Ki 32-bit registers per block, 132 SMs.
SM90_PROPERTIES = {"max_shared_mem": 232448, "max_num_regs": 65536, "multiprocessor_count": 132,
                   "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


def _cuda_driver_class():
    from triton.backends.nvidia.driver import CudaDriver
    return CudaDriver


def make_offline_driver(capability: int = 90, warp_size: int = 32, properties: dict | None = None):
    """A stand-in for triton's CUDA driver: reports `capability` as the current target and the device
    properties of that GPU, has device 0 and stream 0, and refuses anything that would run."""
    from triton.backends.compiler import GPUTarget

    props = dict(SM90_PROPERTIES if properties is None else properties)

    class OfflineDriver(_cuda_driver_class()):
        offline = True

        def __init__(self):   # CudaDriver.__init__ loads libcuda; nothing here needs it
            self.target = GPUTarget("cuda", capability, warp_size)
            self.utils = types.SimpleNamespace(get_device_properties=lambda device: dict(props))

        @classmethod
        def is_active(cls):
            return False

        def get_current_target(self):
            return self.target

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def set_current_device(self, device):
            pass

        def get_device_capability(self, device=None):
            return divmod(capability, 10)

        def get_active_torch_device(self):
            import torch
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("offline target: nothing can be timed")

    return OfflineDriver()


def is_offline() -> bool:
    from triton.runtime import driver
    return bool(getattr(driver._active, "offline", False))


def _llir_only_hook(*args):
    """knobs.runtime.add_stages_inspection_hook that stops compiles after the LLVM IR: shared memory is
    known there (the allocation pass of make_llir), registers are not. Called with no arguments for a
    cache key (triton 3.8), with (backend, stages, options, language, capability) to edit the stages."""
    if not args:
        return "wsol_fast-llir-only", "wsol_fast-llir-only"
    stages = args[1]

    def ptx(src, metadata):
        found = re.search(r"define\s[^@]*@([A-Za-z_][A-Za-z0-9_]*)\(", src)
        metadata["name"] = found.group(1) if found else "kernel"
        return ""

    stages["ptx"] = ptx
    stages["cubin"] = lambda src, metadata: b""


@contextlib.contextmanager
def offline_target(capability: int = 90, properties: dict | None = None, stop_after: str | None = None):
    """Make triton compile for `capability` with no device: the active driver is swapped for the
    stand-in, and restored on exit. stop_after="llir" ends each compile after the LLVM IR (shared memory
    exact, no registers; about half the time), with its own temporary cache directory so that no
    truncated binary reaches Triton's cache. Compiled kernels stay in the kernels' in-process caches, so
    use fresh kernel modules (a subprocess), never ones that also launch on a real GPU."""
    from triton import knobs
    from triton.runtime import driver

    if stop_after not in (None, "llir"):
        raise ValueError(f"stop_after must be None or 'llir', got {stop_after!r}")
    previous = driver._active
    previous_hook, previous_cache = knobs.runtime.add_stages_inspection_hook, knobs.cache.dir
    driver.set_active(make_offline_driver(capability, properties=properties))
    with contextlib.ExitStack() as stack:
        if stop_after == "llir":
            knobs.runtime.add_stages_inspection_hook = _llir_only_hook
            knobs.cache.dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="wsol_fast_llir_"))
        try:
            yield driver.active
        finally:
            driver._active = previous
            knobs.runtime.add_stages_inspection_hook, knobs.cache.dir = previous_hook, previous_cache


@dataclasses.dataclass
class Launch:
    """One launch of an autotuned kernel, as the launcher made it (nothing was run)."""
    name: str
    autotuner: object
    grid: object
    args: tuple
    kwargs: dict

    def named_args(self) -> dict:
        return dict(zip(self.autotuner.arg_names, self.args))

    def kept_configs(self) -> list:
        """The configs the autotuner would benchmark for this launch: its early_config_prune, as at launch."""
        self.autotuner.nargs = self.named_args()
        try:
            return list(self.autotuner.prune_configs(dict(self.kwargs)))
        finally:
            self.autotuner.nargs = None

    def compile(self, config):
        """The CompiledKernel a launch of `config` would run (compiled now, every stage, nothing launched)."""
        return self.autotuner.fn.warmup(*self.args, grid=self.grid, **self.kwargs, **config.all_kwargs())

    def resources(self, config) -> dict:
        compiled = self.compile(config)
        return {"shared": int(compiled.metadata.shared), **cubin_resources(compiled)}


@contextlib.contextmanager
def captured_launches(module, names):
    """Replace the autotuned kernels `names` of `module` by recorders for the duration: a launcher's
    `kernel[grid](*args, **kwargs)` appends a Launch and runs nothing."""
    launches: list[Launch] = []
    originals = {name: getattr(module, name) for name in names}

    class Recorder:
        def __init__(self, name, autotuner):
            self.name, self.autotuner = name, autotuner

        def __getitem__(self, grid):
            def record(*args, **kwargs):
                launches.append(Launch(self.name, self.autotuner, grid, args, kwargs))
            return record

    for name, kernel in originals.items():
        setattr(module, name, Recorder(name, kernel))
    try:
        yield launches
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)


def _cuobjdump() -> str | None:
    try:
        import triton
        candidate = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    except Exception:
        candidate = ""
    return candidate if os.path.isfile(candidate) else shutil.which("cuobjdump")


def cubin_resources(compiled) -> dict:
    """Registers per thread and local memory (spills) of a compiled kernel's cubin, read by the
    cuobjdump in the triton wheel; {} where there is none."""
    tool = _cuobjdump()
    cubin = compiled.asm.get("cubin") if hasattr(compiled, "asm") else None
    if tool is None or not cubin:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        out = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True,
                             timeout=60).stdout
    found = {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out)}
    return {"regs": found.get("reg"), "local": found.get("local"), "stack": found.get("stack")}


def record_launches(op: str, dtype_name: str, batch: int, n: int, c: int, device="meta") -> list[Launch]:
    """The launches of one op's forward and backward at one shape, recorded (nothing runs).

    On "meta" tensors by default: no memory and no arithmetic (the bmm backward's products), and a
    data_ptr of 0, aligned as every CUDA allocation is (Triton specialises pointers on 16-byte alignment).
    op: "attention" (forward, then the fused and the atomic backward; c is C'), "attention-fused" (forward
    and the fused backward), "attention-bmm" (the bmm backward's Triton kernel) or "masked_gap" (forward
    and backward; c is channels). Each Launch's name
    is the kernel's, with the backward variant in brackets."""
    import torch

    from . import masked_gap as gap
    from . import nonlocal_attention as att

    dtype = getattr(torch, dtype_name)
    empty = lambda *shape, dtype=dtype: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
    if op == "masked_gap":
        x, a = empty(batch, c, n), empty(batch, n)
        with captured_launches(gap, ("_masked_gap_forward_kernel", "_masked_gap_backward_kernel")) as launches:
            gap.masked_gap_forward(x, a, 1.0, 0.5)
            gap.masked_gap_backward(empty(batch, 3, c), x, a, empty(batch, 3, dtype=torch.int64), 1.0, 0.5)
        return launches
    variants = {"attention": ("fused", "atomic"), "attention-fused": ("fused",), "attention-bmm": ("bmm",)}
    if op not in variants:
        raise ValueError(f"op must be one of {sorted(variants)} or masked_gap, got {op!r}")
    f, g, zbar = empty(batch, n, c), empty(batch, n, c), empty(batch, n)
    a, lse = empty(batch, n), empty(batch, n, dtype=torch.float32)
    names = ("_attention_forward_kernel", "_attention_backward_kernel", "_attention_softmax_grad_kernel")
    with captured_launches(att, names) as launches:
        if op != "attention-bmm":
            att.nonlocal_attention_forward(f, g, zbar, 0.1)
        for variant in variants[op]:
            before = len(launches)
            att.nonlocal_attention_backward(a, f, g, zbar, a, lse, 0.1, variant=variant)
            for launch in launches[before:]:
                launch.name = f"{launch.name}[{variant}]"
    return launches
