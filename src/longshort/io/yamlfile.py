"""Recipes and config files: YAML without anchors or aliases, with capped depth and size, a key
given twice in one mapping refused."""

from __future__ import annotations

import os
from typing import Any

from longshort.errors import InputError
from longshort.io.paths import check_input_file

YAML_MAX_BYTES = 1_000_000  # recipes are a few KB; a bigger file is not a recipe
YAML_MAX_DEPTH = 32  # recipes nest 3-4 levels


def read_yaml(path: str | os.PathLike, *, max_bytes: int = YAML_MAX_BYTES, max_depth: int = YAML_MAX_DEPTH) -> Any:
    """Parse a YAML config file safely: no anchors/aliases (no alias bombs), at most `max_depth`
    levels of nesting and `max_bytes` bytes, and a key given twice in one mapping is an error
    (YAML would silently keep the last one). Any problem is an `InputError` naming the file and
    line."""
    import yaml

    p = check_input_file(path, "YAML file")
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(f"too large for a config file ({size:,} bytes; at most {max_bytes:,})", path=str(p))
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", path=str(p), line=line) from None
    try:
        return yaml.load(text, Loader=_loader_class(max_depth))  # noqa: S506 - our SafeLoader subclass
    except InputError as exc:
        raise InputError(exc.message, path=str(p), line=exc.line, field=exc.field) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", path=str(p), line=line) from None
    except RecursionError:
        raise InputError("nested too deeply", path=str(p)) from None


def compose_yaml(text: str, max_depth: int = YAML_MAX_DEPTH):
    """The YAML node tree of `text` with the same limits as `read_yaml` (for line lookups)."""
    import yaml

    return yaml.compose(text, Loader=_loader_class(max_depth))  # noqa: S506


def _loader_class(max_depth: int):
    import yaml
    from yaml.events import AliasEvent, CollectionStartEvent

    class _Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                raise InputError("YAML anchors and aliases (&name / *name) are not allowed in config files",
                                 line=event.start_mark.line + 1)
            nested = isinstance(event, CollectionStartEvent)
            if nested:
                self._depth += 1
                if self._depth > max_depth:
                    raise InputError(f"nested more than {max_depth} levels deep", line=event.start_mark.line + 1)
            try:
                return super().compose_node(parent, index)
            finally:
                if nested:
                    self._depth -= 1

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                msg = ("a number with more digits than Python converts (4,300)" if "integer string" in str(exc)
                       else str(exc).split(";")[0])
                raise InputError(f"invalid value: {msg}", line=node.start_mark.line + 1) from None

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise InputError("a mapping key must be a plain value", line=key_node.start_mark.line + 1) from None
                if key in seen:
                    raise InputError(f"key {key!r} is given twice (first on line {seen[key]})",
                                     line=key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return _Loader
