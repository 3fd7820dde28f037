"""The floors of the package (docs/layout.md), read from every module's imports with `ast`: no import
circle, nothing on a lower floor imports a higher one, commands stand side by side (only ablate and tune
run train), and no module is over MAX_LINES lines unless its first line says why. And the tests mirror the
package: a test file named after every module, or an entry of TESTED_ELSEWHERE saying where and why."""
from __future__ import annotations

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "wsol_fast"
MAX_LINES = 450
WHY_LONGER = re.compile(r"longer than 450 lines", re.IGNORECASE)

# ground: imports nothing of the package; kernels: ops/ (imports only ground and itself);
# commands: what a user runs (`python -m ...`); library: everything else.
GROUND = {"wsol_fast.errors", "wsol_fast.files"}
COMMANDS = {"wsol_fast.train", "wsol_fast.evaluate", "wsol_fast.predict", "wsol_fast.plot",
            "wsol_fast.ablate", "wsol_fast.tune", "wsol_fast.compare", "wsol_fast.launch", "wsol_fast.data.__main__"}
COMMAND_RUNS_COMMAND = {("wsol_fast.ablate", "wsol_fast.train"), ("wsol_fast.tune", "wsol_fast.train")}
FLOORS = ("ground", "kernels", "library", "commands")


def floor(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module == "wsol_fast.ops" or module.startswith("wsol_fast.ops."):
        return "kernels"
    if module in COMMANDS:
        return "commands"
    return "library"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_extension(module: str) -> bool:
    """A compiled extension (wsol_fast._C, wsol_fast._resize): built from csrc/, it imports nothing."""
    *folder, leaf = module.split(".")
    return any(PACKAGE.parent.joinpath(*folder).glob(f"{leaf}.*so")) or leaf in ("_C", "_resize")


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it (inside functions too). `from X import Y`
    names module X.Y when Y is a module, else X; compiled extensions (_C, _resize) are not modules here."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names
                       if not is_extension(f"{source}.{a.name}")]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def test_the_graph_sees_the_imports_it_should():
    g = graph()
    assert "wsol_fast.errors" in g["wsol_fast.files"] or g["wsol_fast.files"] == set()
    assert "wsol_fast.train" in g["wsol_fast.ablate"]          # a module-level `from . import train`
    assert "wsol_fast.models" in g["wsol_fast.models.vgg"] or "wsol_fast.models.base" in g["wsol_fast.models.vgg"]
    assert set(FLOORS) == {floor(m) for m in g}


def test_ground_floor_imports_nothing_above_it():
    g = graph()
    assert {m: sorted(g[m] - GROUND) for m in GROUND if m in g and g[m] - GROUND} == {}


def test_no_import_circle():
    g = graph()
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    assert circles == []


def test_no_import_from_a_lower_floor_to_a_higher_one():
    g = graph()
    rank = {f: i for i, f in enumerate(FLOORS)}
    upward = [f"{m} ({floor(m)}) -> {t} ({floor(t)})" for m in sorted(g) for t in sorted(g[m])
              if rank[floor(t)] > rank[floor(m)]]
    assert upward == []


def test_commands_stand_side_by_side():
    g = graph()
    borrowed = [f"{m} -> {t}" for m in sorted(g) if m in COMMANDS for t in sorted(g[m])
                if t in COMMANDS and (m, t) not in COMMAND_RUNS_COMMAND]
    assert borrowed == []


def test_no_module_is_too_long_without_saying_why():
    too_long = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not (lines and WHY_LONGER.search(lines[0])):
            too_long.append(f"{name}: {len(lines)} lines")
    assert too_long == []


# ------------------------------------------------------------------------------ a test file per module

TESTS = PACKAGE.parent / "tests"
# Modules tested in a file not named after them: module -> (that test file, why). Everything else maps
# wsol_fast/x.py -> tests/test_x.py and wsol_fast/<folder>/x.py -> tests/<folder>/test_x.py.
TESTED_ELSEWHERE = {
    "wsol_fast": ("tests/ops/test_kernels_triton.py", "__init__: the version, and this checkout's kernels/ as "
                                                      "wsol_fast.kernels, which the Triton tests import"),
    "wsol_fast.launch": ("tests/test_elastic.py", "a faked SLURM job's nodes, launched beside the elastic restarts"),
    "wsol_fast.tuning": ("tests/test_tune.py", "tune's space files, storage and outputs, through tune"),
    "wsol_fast.data": ("tests/data/test_pipeline.py", "__init__: prepare_data and RunData, re-exported"),
    "wsol_fast.data.__main__": ("tests/data/test_pipeline.py", "`check` there; `builtin` in test_generated.py"),
    "wsol_fast.models": ("tests/models/test_models.py", "__init__: the registry, create_model, defaults"),
    "wsol_fast.models.base": ("tests/models/test_block_points.py", "the stage / block loop, segment by segment"),
    "wsol_fast.models.vgg": ("tests/models/test_models.py", "the three backbones side by side (and in "
                                                            "test_block_points.py, test_pretrained.py)"),
    "wsol_fast.models.inception": ("tests/models/test_models.py", "the three backbones side by side"),
    "wsol_fast.models.resnet": ("tests/models/test_models.py", "the three backbones side by side"),
    "wsol_fast.models.adl": ("tests/models/test_icl.py", "the ICL and ADL blocks side by side"),
    "wsol_fast.models.outputs": ("tests/models/test_models.py", "WSOLOutput, what every model returns"),
    "wsol_fast.ops": ("tests/ops/test_ops_registration.py", "__init__: the public ops and their registration"),
    "wsol_fast.ops._library": ("tests/ops/test_ops_registration.py", "the schema and the C++ library's loading"),
    "wsol_fast.ops._autograd": ("tests/ops/test_ops_cpp.py", "the ops' gradients, gradcheck"),
    "wsol_fast.ops._checks": ("tests/ops/test_ops_cpp.py", "the argument errors of every implementation"),
    "wsol_fast.ops._triton": ("tests/ops/test_kernels_triton.py", "the Triton kernels behind it"),
    "wsol_fast.ops.reference": ("tests/ops/test_ops_cpp.py", "the literal reference every kernel is held to"),
}


def mirrored(module: str) -> pathlib.Path:
    """tests/test_x.py for wsol_fast.x, tests/<folder>/test_x.py for wsol_fast.<folder>.x."""
    *folders, leaf = module.split(".")[1:] or [""]
    return TESTS.joinpath(*folders, f"test_{leaf}.py")


def test_every_module_has_a_test_file():
    assert mirrored("wsol_fast.box_search") == TESTS / "test_box_search.py"
    assert mirrored("wsol_fast.data.drawing") == TESTS / "data" / "test_drawing.py"
    untested = [f"{m}: no {mirrored(m).relative_to(TESTS.parent)}" for m in modules()
                if m not in TESTED_ELSEWHERE and not mirrored(m).is_file()]
    assert untested == []
    stale = [f"{m} -> {path}" for m, (path, why) in TESTED_ELSEWHERE.items()
             if m not in modules() or not (TESTS.parent / path).is_file() or not why
             or mirrored(m).is_file()]               # a test named after the module: no exception needed
    assert stale == []
