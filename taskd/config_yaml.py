"""Reading a config file's YAML: PyYAML's safe loader, except that a key given twice in one
mapping is an error, where PyYAML keeps the last one without a word (two ``broker:`` lines,
the second left over from a test, would send every task to the wrong server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from taskd.errors import ConfigError

MERGE_TAG = "tag:yaml.org,2002:merge"  # ``<<: *defaults``: its keys may be given again


def read_yaml(source: str) -> dict[str, Any]:
    """The top-level mapping of the file ``source``; ConfigError saying where it is wrong."""
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file: {exc.strerror}", source) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"not valid YAML{where}: {problem}", source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", "the top level must be a mapping of keys", source)
    return data


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping_without_repeats(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_at: dict[Any, int] = {}
    for key_node, _value in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node)
        try:
            line = first_at.get(key)
        except TypeError:  # not a key at all: the mapping's own construction says so
            continue
        if line is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{key!r} is given twice in one mapping (first at line {line + 1})",
                key_node.start_mark,
            )
        first_at[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats
)
