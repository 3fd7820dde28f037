"""The repository carries what it cites (issue 25, item 8): the method, its numbers and the operator contracts
are docs/spec.md, so nothing points at a specification or folder outside the checkout.

Fails when a text file of wsol_fast/, tests/, benchmarks/, scripts/, csrc/, kernels/, docs/ or README.md, or
the --help of a command, cites the old outside specification (the word in capitals followed by a section
number, or its .md file) or a sibling `shared` folder; when a docs page cited by path is missing; and when a
citation of docs/spec.md names a section that page does not have."""
from __future__ import annotations

import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("wsol_fast", "tests", "benchmarks", "scripts", "csrc", "kernels", "docs", "README.md")
SKIP_DIRS = {"__pycache__", "build", "dist", ".pytest_cache", ".hypothesis", ".benchmarks"}
# Written so that this file does not match itself.
OUTSIDE = {
    "the outside spec's section numbers": re.compile(r"\bSPEC[ ]?\d"),
    "the outside spec's file": re.compile(r"SPEC\.md"),   # upper case: docs/spec.md is ours
    "the shared folder beside the checkout": re.compile(r"(?:\.\./|/work/)shared\b"),
}
DOC_PATH = re.compile(r"\bdocs/[\w./-]+?\.md\b")
# "docs/spec.md §1.3" (code, README), "[spec.md](spec.md) §1.3, §5" (docs/); inside docs/spec.md any "§n".
SPEC_CITATION = re.compile(r"spec\.md\)?((?:,? §\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")


def text_files():
    """(relative path, text) of every text file under SCANNED; binaries (a NUL byte, not UTF-8) are skipped."""
    paths = []
    for entry in SCANNED:
        top = os.path.join(ROOT, entry)
        if os.path.isfile(top):
            paths.append(top)
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                             and not d.endswith(".egg-info"))
            paths += [os.path.join(folder, name) for name in sorted(files)]
    out = []
    for path in paths:
        with open(path, "rb") as fh:
            data = fh.read()
        if b"\0" in data[:8192]:
            continue
        try:
            out.append((os.path.relpath(path, ROOT), data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


@pytest.fixture(scope="module")
def files():
    found = text_files()
    assert any(rel == "README.md" for rel, _ in found) and any(rel == os.path.join("docs", "spec.md")
                                                                  for rel, _ in found)
    return found


def outside_pointers(text: str) -> list[str]:
    """'line N: what (the text)' for each pointer outside the repository in `text`."""
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in OUTSIDE.items():
            if pattern.search(line):
                hits.append(f"line {number}: {what}: {line.strip()[:120]}")
    return hits


def spec_sections() -> set[str]:
    """The numbered headings of docs/spec.md: '1', '1.1', ..."""
    with open(os.path.join(ROOT, "docs", "spec.md"), encoding="utf-8") as fh:
        return {m.group(1) for m in re.finditer(r"^#+ (\d+(?:\.\d+)*)\.? ", fh.read(), re.MULTILINE)}


def cited_sections(rel: str, text: str) -> list[str]:
    if rel == os.path.join("docs", "spec.md"):
        return SECTION.findall(text)
    return [n for m in SPEC_CITATION.finditer(text) for n in SECTION.findall(m.group(1))]


def test_no_file_points_outside_the_repository(files):
    bad = [f"{rel} {hit}" for rel, text in files for hit in outside_pointers(text)]
    assert not bad, "cite docs/spec.md (or another page under docs/) instead:\n" + "\n".join(bad)


def test_every_cited_docs_page_exists(files):
    missing = sorted({f"{rel}: {path}" for rel, text in files for path in DOC_PATH.findall(text)
                      if not os.path.isfile(os.path.join(ROOT, path))})
    assert not missing, "\n".join(missing)


def test_spec_has_the_sections_the_code_cites(files):
    sections = spec_sections()
    assert {"1", "1.1", "1.2", "1.3", "1.4", "2", "3", "4", "5", "6"} <= sections
    cited = [(rel, n) for rel, text in files for n in cited_sections(rel, text)]
    assert len({rel for rel, _ in cited}) >= 20   # the package, tests, csrc, kernels and docs all cite it
    unknown = sorted({f"{rel}: §{n}" for rel, n in cited if n not in sections})
    assert not unknown, f"docs/spec.md has sections {sorted(sections)}; cited:\n" + "\n".join(unknown)


# (command, module, function taking argv): each command's own parser, built in process.
COMMANDS = [("train", "wsol_fast.train_args", "parse_args"), ("evaluate", "wsol_fast.evaluate", "main"),
            ("predict", "wsol_fast.predict", "main"), ("plot", "wsol_fast.plot", "main"),
            ("ablate", "wsol_fast.ablate", "parse_args"), ("tune", "wsol_fast.tune", "parse_args"),
            ("launch", "wsol_fast.launch", "main"), ("data", "wsol_fast.data.__main__", "main")]


def help_text(capsys, function, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        function(argv)
    assert exit_info.value.code in (0, None)
    text = capsys.readouterr().out
    assert "usage:" in text
    return text


@pytest.mark.parametrize("command,module,function", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_points_nowhere_outside(capsys, command, module, function):
    run = getattr(importlib.import_module(module), function)
    text = help_text(capsys, run, ["--help"])
    texts = {"--help": text}
    # Subcommands (python -m wsol_fast.data {check,...}): each one's help too.
    choices = re.search(r"\{([\w,-]+)\}", text.split("\n\n")[0]) if command == "data" else None
    for sub in (choices.group(1).split(",") if choices else []):
        texts[f"{sub} --help"] = help_text(capsys, run, [sub, "--help"])
    assert command != "data" or len(texts) > 1
    bad = [f"{command} {flag} {hit}" for flag, t in texts.items() for hit in outside_pointers(t)]
    assert not bad, "\n".join(bad)
    missing = sorted({path for t in texts.values() for path in DOC_PATH.findall(t)
                      if not os.path.isfile(os.path.join(ROOT, path))})
    assert not missing, f"{command} --help cites missing pages: {missing}"
