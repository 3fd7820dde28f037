#!/usr/bin/env python3
"""Markdown tables from pytest-benchmark JSON files (`--benchmark-json`): one table per benchmark group.

    python scripts/bench_table.py bench.json [more.json ...] [-o table.md]
    python scripts/bench_table.py --summary bench.json        # one line per group (fused vs the rest)

Columns: the provider (extra_info "provider", else the test's parameter id),
pytest-benchmark's median in ms (for the CUDA rows: a call that ends in a device synchronisation),
device_ms where a row recorded one (CUDA events, conftest.run_cuda_benchmark), the speed-up over the
group's reference row ("reference" or "reference-cuda", on the device time where both rows have one),
peak memory in MB, extra MB (peak minus the results every method allocates) and images/s where
recorded. Works for the CPU and the CUDA runs alike.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

REFERENCES = ("reference", "reference-cuda")


def _label(bench: dict) -> str:
    provider = (bench.get("extra_info") or {}).get("provider")
    if provider:
        return str(provider)
    name = bench.get("name", "?")
    return name[name.index("[") + 1:-1] if "[" in name else name


def _time_ms(bench: dict) -> float:
    """The time a row is compared on: its device time when it has one, else the median wall time."""
    extra = bench.get("extra_info") or {}
    return float(extra["device_ms"]) if "device_ms" in extra else bench["stats"]["median"] * 1e3


def _fmt(value, digits=3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def tables(benchmarks: list[dict]) -> str:
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or bench.get("name", "?").split("[")[0], []).append(bench)
    out = []
    for group, rows in groups.items():
        rows = sorted(rows, key=_time_ms)
        reference = next((r for r in rows if _label(r) in REFERENCES), None)
        has_device = any("device_ms" in (r.get("extra_info") or {}) for r in rows)
        has_images = any("images_per_s" in (r.get("extra_info") or {}) for r in rows)
        has_extra = any("extra_mb" in (r.get("extra_info") or {}) for r in rows)
        header = ["provider", "median ms"] + (["device ms"] if has_device else []) + \
                 ["× vs reference", "peak MB"] + (["extra MB"] if has_extra else []) + \
                 (["images/s"] if has_images else []) + ["rounds"]
        out += [f"### {group}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            extra = row.get("extra_info") or {}
            speedup = None
            if reference is not None:
                both_device = "device_ms" in extra and "device_ms" in (reference.get("extra_info") or {})
                ref_ms = _time_ms(reference) if both_device else reference["stats"]["median"] * 1e3
                row_ms = _time_ms(row) if both_device else row["stats"]["median"] * 1e3
                speedup = ref_ms / row_ms if row_ms > 0 else None
            cells = [_label(row), _fmt(row["stats"]["median"] * 1e3)]
            if has_device:
                cells.append(_fmt(extra.get("device_ms")))
            cells += [f"{speedup:.2f}×" if speedup is not None else "", _fmt(extra.get("peak_mb"))]
            if has_extra:
                cells.append(_fmt(extra.get("extra_mb")))
            if has_images:
                cells.append(_fmt(extra.get("images_per_s")))
            cells.append(str(row["stats"].get("rounds", "")))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def summary(benchmarks: list[dict]) -> str:
    """One line per group: the fused row (triton, else fused) against the group's other rows."""
    groups: OrderedDict[str, dict[str, dict]] = OrderedDict()
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or bench.get("name", "?").split("[")[0], {})[_label(bench)] = bench
    lines = []
    for group, rows in groups.items():
        fused = rows.get("triton") or rows.get("fused")
        if fused is None:
            continue
        parts = [f"{_label(fused)} {_time_ms(fused):.3g} ms"]
        for name, row in rows.items():
            if row is not fused:
                parts.append(f"{_time_ms(row) / _time_ms(fused):.2f}x vs {name}")
        peaks = {name: (row.get("extra_info") or {}).get("peak_mb") for name, row in rows.items()}
        if peaks.get(_label(fused)) is not None:
            ref_peak = peaks.get("reference-cuda", peaks.get("reference"))
            parts.append(f"peak {peaks[_label(fused)]:.3g} MB"
                         + (f" (reference {ref_peak:.3g})" if ref_peak is not None else ""))
        lines.append(f"{group}: " + ", ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("-o", "--output", help="write the markdown here as well as to stdout")
    parser.add_argument("--summary", action="store_true",
                        help="one line per group instead: the fused row's time, how many times faster it is "
                             "than each other row (device time where recorded), peak memory")
    args = parser.parse_args(argv)
    benchmarks, header = [], []
    for path in args.files:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"bench_table: skipping {path}: {exc}", file=sys.stderr)
            continue
        machine = data.get("machine_info") or {}
        header.append(f"- `{path}`: {len(data.get('benchmarks', []))} rows, {machine.get('node', '?')}, "
                      f"{(machine.get('cpu') or {}).get('brand_raw', '?')}, {data.get('datetime', '')}")
        benchmarks += data.get("benchmarks", [])
    text = summary(benchmarks) if args.summary else "\n".join(header) + "\n\n" + tables(benchmarks)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    return 0 if benchmarks else 1


if __name__ == "__main__":
    sys.exit(main())
