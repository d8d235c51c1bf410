"""YAML files of a bundle, parsed into pydantic models with errors that point at a line.

pydantic reports *where* in the data a value is wrong as a ``loc`` tuple, but knows
nothing about the file. We compose the YAML once more into its node tree (which keeps
each node's start mark) and walk the ``loc`` down that tree, so an operator reads
``data.yaml:12: models.ranker.output.mode: Input should be 'scores', ...``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from policies.errors import PolicyError

M = TypeVar("M", bound=BaseModel)


def parse_yaml(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """The plain data and the node tree of one YAML document (SafeLoader only)."""
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"invalid YAML: {problem}", file=file, line=line) from exc
    return data, node


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node that ``loc`` reaches (the key node for mappings)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    current: yaml.Node | None = node
    for step in loc:
        if isinstance(current, yaml.MappingNode):
            found = None
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(step):
                    found = (key_node, value_node)
                    break
            if found is None:
                break
            line = found[0].start_mark.line + 1
            current = found[1]
        elif isinstance(current, yaml.SequenceNode) and isinstance(step, int):
            if not 0 <= step < len(current.value):
                break
            current = current.value[step]
            line = current.start_mark.line + 1
        else:
            break
    return line


def key_path(loc: tuple[int | str, ...]) -> str:
    """``("models", "ranker", "variants", 0, "weight")`` → ``models.ranker.variants[0].weight``."""
    out = ""
    for step in loc:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out or "<root>"


def load_model(text: str, file: str, model: type[M]) -> tuple[M, yaml.Node | None]:
    """Validate one YAML document into ``model``; the first error becomes a ``PolicyError``."""
    data, node = parse_yaml(text, file)
    if data is None:
        data = {}
    try:
        return model.model_validate(data), node
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise PolicyError(message, file=file, line=line_of(node, loc), key=key_path(loc)) from exc
