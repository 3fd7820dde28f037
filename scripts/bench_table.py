#!/usr/bin/env python3
"""Markdown tables from pytest-benchmark JSON files (`--benchmark-json`), or from the one results file
of scripts/gpu_check.sh (the same format, merged, with an "environment" block).

    python scripts/bench_table.py results.json [more.json ...] [-o tables.md]   # one table per group
    python scripts/bench_table.py --summary results.json     # one line per group (fused vs the rest)
    python scripts/bench_table.py --targets results.json     # the GPU targets of issue 15: met / missed
    python scripts/bench_table.py --policy results.json      # BACKWARD_POLICY entries the rows support
    python scripts/bench_table.py --merge out.json a.json b.json [--env env.json]   # one results file
    python scripts/bench_table.py --dispatch gpu_results.json > wsol_fast/ops/dispatch_table.json
                                  # the CUDA dispatch table (wsol_fast/ops/dispatch.py): forward+backward
                                  # device times per op, dtype and shape, with the GPU and the date

Table columns: the provider (extra_info "provider", else the test's parameter id); "host ms",
pytest-benchmark's median (for CUDA rows a call that ends in a synchronisation: launch overheads
included); "device ms" where a row recorded one (CUDA-graph replay or profiler, benchmarks/cuda_timing.py:
the GPU's own time); "eager ms" (CUDA events around the eager call: host gaps included); the speed-up
over the group's reference row on the device time where both rows have one, else on host time; peak
MB; extra MB (peak minus the results every method allocates); images/s where recorded. Works for the
CPU and the CUDA runs alike.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # run from a checkout
from wsol_fast.files import atomic_write  # noqa: E402

REFERENCES = ("reference", "reference-cuda", "icl-reference-ops")


def _extra(bench: dict) -> dict:
    return bench.get("extra_info") or {}


def _label(bench: dict) -> str:
    provider = _extra(bench).get("provider")
    if provider:
        return str(provider)
    name = bench.get("name", "?")
    return name[name.index("[") + 1:-1] if "[" in name else name


def _host_ms(bench: dict) -> float:
    return bench["stats"]["median"] * 1e3


def _time_ms(bench: dict) -> float:
    """The time a row is compared on: its device time when it has one, else the host median."""
    extra = _extra(bench)
    return float(extra["device_ms"]) if "device_ms" in extra else _host_ms(bench)


def _fmt(value, digits=3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _group_name(bench: dict) -> str:
    return bench.get("group") or bench.get("name", "?").split("[")[0]


def _groups(benchmarks: list[dict]) -> OrderedDict:
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for bench in benchmarks:
        groups.setdefault(_group_name(bench), []).append(bench)
    return groups


def _speedup(row: dict, reference: dict) -> float | None:
    both_device = "device_ms" in _extra(row) and "device_ms" in _extra(reference)
    ref_ms = _time_ms(reference) if both_device else _host_ms(reference)
    row_ms = _time_ms(row) if both_device else _host_ms(row)
    return ref_ms / row_ms if row_ms > 0 else None


def tables(benchmarks: list[dict]) -> str:
    out = []
    for group, rows in _groups(benchmarks).items():
        rows = sorted(rows, key=_time_ms)
        reference = next((r for r in rows if _label(r) in REFERENCES), None)
        has = {key: any(key in _extra(r) for r in rows)
               for key in ("device_ms", "eager_events_ms", "images_per_s", "extra_mb")}
        header = (["provider", "host ms"] + (["device ms"] if has["device_ms"] else [])
                  + (["eager ms"] if has["eager_events_ms"] else []) + ["× vs reference", "peak MB"]
                  + (["extra MB"] if has["extra_mb"] else []) + (["images/s"] if has["images_per_s"] else [])
                  + ["rounds"])
        out += [f"### {group}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            extra = _extra(row)
            speedup = _speedup(row, reference) if reference is not None else None
            cells = [_label(row), _fmt(_host_ms(row))]
            if has["device_ms"]:
                method = extra.get("device_method")
                cells.append(_fmt(extra.get("device_ms")) + (" (profiler)" if method == "profiler" else ""))
            if has["eager_events_ms"]:
                cells.append(_fmt(extra.get("eager_events_ms")))
            cells += [f"{speedup:.2f}×" if speedup is not None else "", _fmt(extra.get("peak_mb"))]
            if has["extra_mb"]:
                cells.append(_fmt(extra.get("extra_mb")))
            if has["images_per_s"]:
                cells.append(_fmt(extra.get("images_per_s")))
            cells.append(str(row["stats"].get("rounds", "")))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def summary(benchmarks: list[dict]) -> str:
    """One line per group: the fused row (triton, else fused, else icl) against the group's other rows."""
    lines = []
    for group, rows in _groups(benchmarks).items():
        by_label = {_label(r): r for r in rows}
        fused = by_label.get("triton") or by_label.get("fused") or by_label.get("icl")
        if fused is None:
            continue
        parts = [f"{_label(fused)} {_time_ms(fused):.3g} ms"]
        for name, row in by_label.items():
            if row is not fused:
                parts.append(f"{_time_ms(row) / _time_ms(fused):.2f}x vs {name}")
        peaks = {name: _extra(row).get("peak_mb") for name, row in by_label.items()}
        if peaks.get(_label(fused)) is not None:
            ref_peak = next((peaks[r] for r in REFERENCES if peaks.get(r) is not None), None)
            parts.append(f"peak {peaks[_label(fused)]:.3g} MB"
                         + (f" (reference {ref_peak:.3g})" if ref_peak is not None else ""))
        lines.append(f"{group}: " + ", ".join(parts))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ issue 15's targets

_ATTENTION = re.compile(r"cuda (?P<dtype>\w+) nonlocal-attention B(?P<b>\d+) N(?P<n>\d+) C'(?P<c>\d+) "
                        r"(?P<mode>forward\+backward|forward)$")
_GAP = re.compile(r"cuda (?P<dtype>\w+) masked-gap B\d+ C\d+ (?P<size>\d+x\d+) (?P<mode>forward\+backward|forward)$")
_STEP = re.compile(r"cuda icl-step (?P<backbone>\w+) ")


def _ratio_line(target, shape, measured, met):
    return f"| {target} | {shape} | {measured} | {'met' if met else 'MISSED'} |"


def targets(benchmarks: list[dict]) -> str:
    """The targets of issue 15 (device time), each row met or missed; shapes without rows are omitted."""
    lines = ["| target | shape | measured | verdict |", "|---|---|---|---|"]
    for group, rows in _groups(benchmarks).items():
        by_label = {_label(r): r for r in rows}
        triton, ref = by_label.get("triton"), by_label.get("reference-cuda")
        match = _ATTENTION.match(group)
        if match and triton is not None and ref is not None and match["mode"] == "forward+backward":
            n, c, dtype = int(match["n"]), int(match["c"]), match["dtype"]
            speedup = _time_ms(ref) / _time_ms(triton)
            shape = f"{dtype} N {n} C' {c}"
            measured = f"{speedup:.2f}× ({_time_ms(triton):.3g} vs {_time_ms(ref):.3g} ms)"
            if dtype == "fp32":
                lines.append(_ratio_line("attention fp32 fwd+bwd ≥ 1× the reference", shape, measured, speedup >= 1.0))
            elif n == 3136:
                peak = _extra(triton).get("peak_mb")
                lines.append(_ratio_line("attention fwd+bwd N 3136 ≥ 2×, memory O(B·N)", shape,
                                         measured + (f", peak {peak:.3g} MB" if peak is not None else ""),
                                         speedup >= 2.0))
            elif n == 784 and c <= 256:
                lines.append(_ratio_line("attention fwd+bwd N 784 C' ≤ 256 ≥ 2×", shape, measured, speedup >= 2.0))
            elif n == 784 and c == 512:
                lines.append(_ratio_line("attention fwd+bwd N 784 C' 512 ≥ 1.2×", shape, measured, speedup >= 1.2))
        match = _GAP.match(group)
        roofline = by_label.get("roofline-cuda")
        if match and match["mode"] == "forward+backward" and triton is not None and roofline is not None:
            ratio = _time_ms(triton) / _time_ms(roofline)
            lines.append(_ratio_line("masked-GAP fwd+bwd within 1.5× of read + write roofline",
                                     f"{match['dtype']} {match['size']}",
                                     f"{ratio:.2f}× the roofline ({_time_ms(triton):.3g} vs {_time_ms(roofline):.3g} ms)",
                                     ratio <= 1.5))
        match = _STEP.match(group)
        icl, cam, icl_ref = by_label.get("icl"), by_label.get("cam"), by_label.get("icl-reference-ops")
        if match and icl is not None and cam is not None and icl_ref is not None:
            over_cam = _host_ms(icl) / _host_ms(cam)
            met = over_cam <= 1.15 and _host_ms(icl) < _host_ms(icl_ref)
            lines.append(_ratio_line("ICL step ≤ 1.15× CAM and faster than ICL on reference ops",
                                     match["backbone"],
                                     f"{over_cam:.2f}× CAM; {_host_ms(icl):.3g} vs {_host_ms(icl_ref):.3g} ms "
                                     "(reference ops)", met))
    return "\n".join(lines)


def policy(benchmarks: list[dict]) -> str:
    """BACKWARD_POLICY entries (kernels/nonlocal_attention.py) where a non-default backward variant has
    the lowest device time of the Triton rows of a forward+backward group."""
    variants = {"triton": "fused", "triton-atomic": "atomic", "triton-bmm": "bmm"}
    dtypes = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    entries = []
    for group, rows in _groups(benchmarks).items():
        match = _ATTENTION.match(group)
        if not match or match["mode"] != "forward+backward":
            continue
        candidates = [(r, variants[_label(r)]) for r in rows if _label(r) in variants and "device_ms" in _extra(r)]
        # The plain "triton" row ran whatever the policy chose then: it stands for "fused" only if so.
        candidates = [(r, v) for r, v in candidates
                      if _label(r) != "triton" or _extra(r).get("backward_variant", "fused") == "fused"]
        if not candidates:
            continue
        best, variant = min(candidates, key=lambda rv: _time_ms(rv[0]))
        if variant != "fused":
            key = (dtypes.get(match["dtype"], match["dtype"]), int(match["n"]), int(match["c"]))
            entries.append(f"    {key!r}: {variant!r},   # {_time_ms(best):.3g} ms device")
    return "BACKWARD_POLICY = {\n" + "\n".join(entries) + ("\n" if entries else "") + "}"


_GAP_SHAPE = re.compile(r"cuda (?P<dtype>\w+) masked-gap B\d+ C(?P<c>\d+) (?P<h>\d+)x(?P<w>\d+) forward\+backward$")
# Row label -> implementation name of the dispatch table; the plain "triton" row names the backward
# variant it ran (extra_info backward_variant) where it recorded one.
_DISPATCH_IMPLS = {"reference-cuda": "reference", "triton": "triton", "triton-atomic": "triton-atomic",
                   "triton-bmm": "triton-bmm"}


def dispatch_table(paths: list[str]) -> dict:
    """The dispatch table of wsol_fast/ops/dispatch.py from CUDA forward+backward groups: per op, dtype and
    shape, each implementation's device time (reference first, so that a tie keeps plain PyTorch).
    Groups without a reference row or a Triton row are left out. GPU and date: the results' environment."""
    benchmarks, _ = load(paths)
    env, date = {}, None
    for path in paths:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        env.update(data.get("environment") or {})
        date = date or data.get("datetime")
    dtypes = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    rows = []
    for group, group_rows in _groups(benchmarks).items():
        attention, gap = _ATTENTION.match(group), _GAP_SHAPE.match(group)
        if attention and attention["mode"] == "forward+backward":
            op, match, shape = "nonlocal_attention_map", attention, [int(attention["n"]), int(attention["c"])]
        elif gap:
            op, match, shape = "masked_gap", gap, [int(gap["c"]), int(gap["h"]) * int(gap["w"])]
        else:
            continue
        ms = {}
        for row in sorted(group_rows, key=lambda r: _label(r) != "reference-cuda"):
            label = _label(row)
            if label not in _DISPATCH_IMPLS:
                continue
            name = _DISPATCH_IMPLS[label]
            if label == "triton" and op == "nonlocal_attention_map" and _extra(row).get("backward_variant"):
                name = f"triton-{_extra(row)['backward_variant']}"
            ms.setdefault(name, round(_time_ms(row), 4))
        if "reference" in ms and len(ms) > 1:
            rows.append({"op": op, "dtype": dtypes.get(match["dtype"], match["dtype"]), "shape": shape, "ms": ms})
    return {"about": "Device times (ms, forward+backward) per op, dtype and shape, measured on a GPU; each shape's "
                     "fastest implementation is what wsol_fast.ops runs on CUDA when impl=None "
                     "(wsol_fast/ops/dispatch.py). Regenerate: python scripts/bench_table.py --dispatch "
                     "gpu_out/gpu_results.json > wsol_fast/ops/dispatch_table.json",
            "gpu": env.get("gpu", "unknown GPU"), "date": str(env.get("date") or date or "unknown date")[:10],
            "source": ", ".join(os.path.basename(p) for p in paths) + " (device ms where recorded)",
            "kernels": f"triton {env.get('triton', '?')}, torch {env.get('torch', '?')}",
            "shape_key": {"nonlocal_attention_map": ["N", "C'"], "masked_gap": ["C", "N"]}, "rows": rows}


# ------------------------------------------------------------------------------------------- I/O

def load(paths: list[str]) -> tuple[list[dict], list[str]]:
    benchmarks, header = [], []
    for path in paths:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"bench_table: skipping {path}: {exc}", file=sys.stderr)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            print(f"bench_table: skipping {path}: not a pytest-benchmark JSON (no 'benchmarks' list)",
                  file=sys.stderr)
            continue
        machine = data.get("machine_info") or {}
        env = data.get("environment") or {}
        where = env.get("gpu") or f"{machine.get('node', '?')}, {(machine.get('cpu') or {}).get('brand_raw', '?')}"
        versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "cuda", "driver") if env.get(k))
        header.append(f"- `{os.path.basename(path)}`: {len(data['benchmarks'])} rows, {where}"
                      + (f", {versions}" if versions else "") + f", {data.get('datetime', '')}")
        benchmarks += data["benchmarks"]
    return benchmarks, header


def merge(output: str, paths: list[str], env_path: str | None) -> int:
    """Write one results file: every row of `paths`, the first file's machine_info and datetime, and
    the environment (gpu_check.sh's env.json) if given. Atomic (temporary file, then rename)."""
    merged: dict = {"benchmarks": []}
    for path in paths:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"bench_table: skipping {path}: {exc}", file=sys.stderr)
            continue
        for key in ("machine_info", "commit_info", "datetime", "version"):
            merged.setdefault(key, data.get(key))
        merged["benchmarks"] += data.get("benchmarks", [])
    if env_path:
        with open(env_path) as fh:
            merged["environment"] = json.load(fh)
    atomic_write(json.dumps(merged, indent=1), output)
    print(f"bench_table: {len(merged['benchmarks'])} rows -> {output}")
    return 0 if merged["benchmarks"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files (or gpu_check.sh's results file)")
    parser.add_argument("-o", "--output", help="write the markdown here as well as to stdout")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--summary", action="store_true",
                      help="one line per group: the fused row's time, how many times faster it is than each "
                           "other row (device time where recorded), peak memory")
    mode.add_argument("--targets", action="store_true", help="issue 15's GPU targets, met or missed")
    mode.add_argument("--policy", action="store_true", help="the attention backward policy the rows support")
    mode.add_argument("--merge", metavar="OUT", help="merge the files into one results file OUT")
    mode.add_argument("--dispatch", action="store_true",
                      help="the CUDA dispatch table (JSON) for wsol_fast/ops/dispatch_table.json")
    parser.add_argument("--env", help="with --merge: a JSON file of environment facts (GPU, versions)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.files, args.env)
    if args.dispatch:
        table = dispatch_table(args.files)
        print(json.dumps(table, indent=1))
        return 0 if table["rows"] else 1
    benchmarks, header = load(args.files)
    if args.summary:
        text = summary(benchmarks)
    elif args.targets:
        text = targets(benchmarks)
    elif args.policy:
        text = policy(benchmarks)
    else:
        text = "\n".join(header) + "\n\n" + tables(benchmarks)
    print(text)
    if args.output:
        atomic_write(text + "\n", args.output)
    return 0 if benchmarks else 1


if __name__ == "__main__":
    sys.exit(main())
