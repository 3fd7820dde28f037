"""`python -m wsol_fast.train --config FILE`: a run's settings from a JSON or YAML file.

The file has the layout of a run folder's config.json (sections data / model / optim / runtime), so
`--config RUN/config.json` reruns a run; a flat file (`backbone: vgg16`, `batch-size: 16`) works too.
Its values become the command line's defaults, so flags given on the command line override them. A key
that is no setting is an error naming the file and the key; a value of the wrong type or outside a
flag's choices is an error naming the key.
"""
from __future__ import annotations

import argparse

import json
import os
from dataclasses import fields

from .config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig
from .errors import WsolError

SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "runtime": RuntimeConfig}


class ConfigFileError(WsolError, ValueError):
    pass


def _field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def read_config_file(path: str) -> dict:
    """The file's mapping: YAML for .yaml/.yml, JSON otherwise. Errors name the file (and line)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigFileError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    if path.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise ConfigFileError(f"--config {path}{where}: not valid YAML: "
                                  f"{getattr(exc, 'problem', None) or exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"--config {path}, line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def settings(data: dict, path: str) -> dict[tuple[str, str], object]:
    """{(section, field): value} of a nested (config.json) or flat file; unknown keys are errors."""
    owner = {name: section for section, cls in SECTIONS.items() for name in _field_names(cls)}
    out: dict[tuple[str, str], object] = {}
    for key, value in data.items():
        key = str(key)
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigFileError(f"--config {path}: section {key!r} must be a mapping, "
                                      f"got {type(value).__name__}")
            known = _field_names(SECTIONS[key])
            for name, v in value.items():
                name = str(name).replace("-", "_")
                if name not in known:
                    raise ConfigFileError(f"--config {path}: unknown key '{key}.{name}' (the {key} section's "
                                          f"keys: {', '.join(known)})")
                out[(key, name)] = v
            continue
        name = key.replace("-", "_")
        if name not in owner:
            raise ConfigFileError(f"--config {path}: unknown key {key!r} (expected the sections "
                                  f"{', '.join(SECTIONS)} of a config.json, or their keys)")
        out[(owner[name], name)] = value
    return out


def _checked(action, key: str, value, path: str):
    """The value a flag's default may take: strings converted by the flag's type, choices enforced."""
    if value is None:
        return value
    kind = getattr(action.type, "base_type", action.type)   # flags.py's range-checked types: int or float
    if kind in (int, float):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ConfigFileError(f"--config {path}: {key} must be {kind.__name__}, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigFileError(f"--config {path}: {key} must be {kind.__name__}, got {value!r}")
        value = kind(value)
        if action.type is not kind:   # the flag's own range check (e.g. > 0), as on the command line
            try:
                action.type(str(value))
            except argparse.ArgumentTypeError as exc:
                raise ConfigFileError(f"--config {path}: {key} {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigFileError(f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, "
                              f"got {value!r}")
    return value


def apply_to_parser(parser, path: str) -> dict[tuple[str, str], object]:
    """Make FILE's values the parser's defaults. Returns the settings that have no flag
    ({(section, field): value}, e.g. optim.momentum): the caller sets them on the parsed config."""
    values = settings(read_config_file(path), path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults, without_flag = {}, {}
    for (section, name), value in values.items():
        action = actions.get(name)
        if action is None:
            if isinstance(value, (dict, list)):
                raise ConfigFileError(f"--config {path}: {section}.{name} must be a single value")
            without_flag[(section, name)] = value
        else:
            defaults[name] = _checked(action, f"{section}.{name}", value, path)
    parser.set_defaults(**defaults)
    return without_flag


def output_in_use(output: str | None) -> bool:
    """Whether a run folder already holds a run (its config.json)."""
    return bool(output) and os.path.isfile(os.path.join(output, "config.json"))
