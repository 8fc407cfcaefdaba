"""Config files plus `key=value` overrides, checked against dataclasses with clear messages.

A config is a JSON file (or a named config shipped in sevlm/configs). Overrides use dotted
keys (`model.n_layer=2`, `train.lr=1e-4`); values are parsed as JSON where they can be
(`true`, `3`, `[1,2]`) and kept as strings otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from sevlm.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


def named_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(path_or_name: str | None, overrides: list[str] | None = None) -> dict:
    """Read a config file (or a shipped config by name) and apply `key=value` overrides."""
    cfg: dict = {}
    if path_or_name:
        path = Path(path_or_name)
        if not path.is_file() and (CONFIG_DIR / f"{path_or_name}.json").exists():
            path = CONFIG_DIR / f"{path_or_name}.json"
        if not path.is_file():
            raise ConfigError(
                f"config {path_or_name!r} not found (a file path, or one of: {', '.join(named_configs())})"
            )
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: a config must be a JSON object")
    return apply_overrides(cfg, overrides or [])


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = json.loads(json.dumps(cfg))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = parse_value(value)
    return cfg


def _check_type(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every setting of dataclass `cls` as a dotted key (`schedule.micro_batch`)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        out.extend(dotted_keys(tp, f"{key}.") if dataclasses.is_dataclass(tp) else [key])
    return out


def suggest_keys(key: str, known: list[str]) -> list[str]:
    """Dotted keys a mistyped or unqualified `key` may mean: those that end in it (`micro_batch`
    -> `schedule.micro_batch`), else the closest spellings."""
    tail = key.rsplit(".", 1)[-1]
    same_tail = [k for k in known if k.rsplit(".", 1)[-1] == tail]
    if same_tail:
        return same_tail[:3]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    by_tail = {k.rsplit(".", 1)[-1]: k for k in known}
    return close or [by_tail[t] for t in difflib.get_close_matches(tail, list(by_tail), n=3, cutoff=0.75)]


def from_dict(cls: type, data: dict | None, where: str = "config", _root: type | None = None, _path: str = "") -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys (with the keys they may mean) and
    values of the wrong type."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = dotted_keys(_root or cls)
        hints_ = []
        for k in unknown:
            means = suggest_keys(_path + k, known)
            hints_.append(f"{k} (did you mean {' or '.join(means)}?)" if means else k)
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints_)}; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{where}.{name}", _root or cls, f"{_path}{name}.")
        elif not _check_type(value, tp):
            raise ConfigError(f"{where}.{name}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
        elif tp is float and isinstance(value, int):
            value = float(value)
        if isinstance(value, list) and typing.get_origin(tp) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
