"""Build script: the pure-Python package plus the optional C++ operator library.

Switches (environment variables):
  WSOL_FAST_SKIP_CPP=1   do not build csrc/ (the package falls back to the reference ops)
  WSOL_FAST_FORCE_CPP=1  fail the install if csrc/ does not build (default: warn and go on)

`kernels/` (Triton) is installed as `wsol_fast.kernels`, never as a top-level
`kernels` package, because a PyPI package of that name exists.
"""
import glob
import os
import sys
import warnings

from setuptools import Extension, find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP_CPP = os.environ.get("WSOL_FAST_SKIP_CPP", "0") == "1"
FORCE_CPP = os.environ.get("WSOL_FAST_FORCE_CPP", "0") == "1"


def cpp_extension():
    """Return (ext_modules, cmdclass); never raise unless FORCE_CPP is set."""
    if SKIP_CPP:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch missing at build time
        if FORCE_CPP:
            raise
        warnings.warn(f"wsol_fast: torch not importable at build time ({exc}); skipping the C++ ops")
        return [], {}

    # csrc/resize.cpp is its own module (wsol_fast._resize: plain Python C API, no torch); the rest is _C.
    sources = sorted(s for s in glob.glob(os.path.join("csrc", "*.cpp")) if os.path.basename(s) != "resize.cpp")
    if not sources:
        return [], {}
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # C++20: the headers of torch >= 2.10 need it (std::strong_ordering). No -march: the wheel must
    # run on any x86-64; the kernels get SIMD from ATen's runtime dispatch and `omp simd` loops.
    ext = CppExtension(
        name="wsol_fast._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++20", *openmp]},
        extra_link_args=openmp,
    )
    # Pillow's bilinear resize, bit-exact (the loaders' resize; wsol_fast/data/transforms.py falls back to
    # Pillow itself without it). -fopenmp-simd: its `omp simd` loops, without the OpenMP runtime.
    resize = Extension(
        name="wsol_fast._resize",
        sources=[os.path.join("csrc", "resize.cpp")],
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fopenmp-simd"]},
        language="c++",
    )

    class SafeBuildExtension(BuildExtension.with_options(no_python_abi_suffix=True)):
        """Warn instead of failing the whole install when the compiler is missing or breaks."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                if FORCE_CPP:
                    raise
                warnings.warn(f"wsol_fast: C++ ops failed to build ({exc}); "
                              "the package will fall back to the pure-PyTorch reference")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                if FORCE_CPP:
                    raise
                warnings.warn(f"wsol_fast: C++ ops failed to build ({exc}); "
                              "the package will fall back to the pure-PyTorch reference")

    return [ext, resize], {"build_ext": SafeBuildExtension}


ext_modules, cmdclass = cpp_extension()

setup(
    packages=find_packages(include=["wsol_fast", "wsol_fast.*"]) + ["wsol_fast.kernels"],
    package_data={"wsol_fast.ops": ["dispatch_table.json"],   # the measured dispatch (ops/dispatch.py)
                  "wsol_fast": ["tune_spaces/*.yaml"]},       # tune's search spaces
    package_dir={"wsol_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
