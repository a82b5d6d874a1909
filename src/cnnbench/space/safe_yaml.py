"""Reading a hand-written YAML file that may be anything: one clear line, never a crash.

Space files are typed by people and fuzzed by tests. Beyond ``yaml.safe_load`` (which
already refuses ``!!python/object`` tags) this refuses, each with one line naming the
file, the line and the problem: bytes that are not UTF-8, files over ``MAX_BYTES``, anchors
and aliases (a few lines of aliases can stand for billions of nodes), duplicate keys (YAML
would silently keep the last) and nesting deeper than ``MAX_DEPTH``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1_000_000
MAX_DEPTH = 20


class YamlProblem(ValueError):
    """What is wrong with the file, with its line when known (without the file name)."""


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise YamlProblem(f"{_where(self.peek_event().start_mark)}: aliases (*name) are not allowed in space files")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise YamlProblem(f"{_where(event.start_mark)}: anchors (&name) are not allowed in space files")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key (a list or mapping used as a key)
                raise YamlProblem(f"{_where(key_node.start_mark)}: a key must be a plain value") from None
            if duplicate:
                raise YamlProblem(f"{_where(key_node.start_mark)}: key {key!r} appears twice")
        return super().construct_mapping(node, deep=deep)


def _depth(node, level: int = 0) -> int:
    if level > MAX_DEPTH:
        raise YamlProblem(f"{_where(node.start_mark)}: nested more than {MAX_DEPTH} levels deep")
    children = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    return max([level, *(_depth(c, level + 1) for c in children)])


def load(path: Path) -> Any:
    """The parsed document; YamlProblem (one line, no file name) or OSError."""
    # Special files first: /dev/zero would be read until memory runs out, a FIFO would hang.
    # A file is opened without blocking and read at most one byte past the limit.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise YamlProblem("not a regular file (a device, FIFO or socket); give a space file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlProblem(f"over {MAX_BYTES:,} bytes; a space file is at most {MAX_BYTES:,}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlProblem(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _depth(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise YamlProblem(f"{_where(mark)}: not valid YAML ({e.problem or e.context})") from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep") from None
