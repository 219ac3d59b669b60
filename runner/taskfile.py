"""The YAML reader of task files: plain data, where each key and value stands, and what is wrong.

libyaml parses; ``_Builder`` turns its node tree into data under YAML 1.2's core schema for
numbers (``0123`` is 123, not octal 83), keeps dates and ``<<``/``=`` as the text written, flags
YAML 1.1's boolean words (``no``, ``on``) where the schema wants a string, and caps what aliases
may expand to. ``-p KEY=VALUE`` values are read by the same rules (``parse_override``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import Problem
from runner.files import MAX_FILE_BYTES, FileTooLarge, NotRegularFile, read_regular
from runner.inputs import name_problem, number_problem, text_problem
from runner.models import TaskSpec
from runner.schema import Path_, expects_string, label

_YAML = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ, _MERGE = f"{_YAML}str", f"{_YAML}map", f"{_YAML}seq", f"{_YAML}merge"
_INT, _FLOAT = f"{_YAML}int", f"{_YAML}float"
_NUMBER_TAGS = {_INT, _FLOAT}
_SCALAR_TAGS = {f"{_YAML}bool", _INT, _FLOAT, f"{_YAML}null"}
# Tags YAML gives plain scalars, kept as the text written: timestamps (`2024-01-01`), and the
# `<<` and `=` that mean something only as keys.
_TEXT_TAGS = {f"{_YAML}timestamp", _MERGE, f"{_YAML}value"}
# Plain words that YAML 1.1 (and so many tools) read as booleans; PyYAML leaves y/n as strings.
_BOOLEAN_WORDS = frozenset(
    w for base in ("y", "yes", "n", "no", "on", "off") for w in (base, base.title(), base.upper())
)
_TRUE_FALSE = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
# YAML 1.2's core schema for numbers, instead of YAML 1.1's (base 60, octal 0123, 1_000, 0b1).
_CORE_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_CORE_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_MAX_NODES = 5_000_000
# What aliases may expand a file to, counted in the characters of its keys and scalar values:
# as much as the file cap lets one write out. A 10 KB file of nested aliases otherwise stands
# for gigabytes, which validates (strings are shared) and then exhausts memory when the
# definitions are serialised for the store.
MAX_EXPANDED_CHARS = MAX_FILE_BYTES


@dataclass
class _Shed:
    """Where a shed file's position tables can be read again, and its tasks' own lines if not."""

    origin: Path
    specs: dict[str, TaskSpec]
    tried: bool = False  # read again and changed: the tables hold each task's line only


@dataclass
class TaskFile:
    """One task file: its data, where each key and value stands, and what is wrong with it.

    A cached file without problems sheds ``keys``, ``values`` and ``traps`` (see ``shed``); read
    positions through ``position`` or ``at``, which read them again when a problem needs one.
    """

    path: str
    data: Any = None
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    traps: dict[Path_, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    digest: str | None = None  # of the bytes read, so a sync can tell an unchanged file
    _shed: _Shed | None = field(default=None, init=False, repr=False, compare=False)
    _asked: bool = field(default=False, init=False, repr=False, compare=False)

    def position(self, where: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column of ``where`` (its key if ``key``), or of its nearest parent."""
        self._asked = True
        if self._shed is not None and not self._shed.tried:
            self._restore(self._shed)
        table = self.keys if key else self.values
        probe = where
        while probe:
            pos = table.get(probe) or self.values.get(probe)
            if pos:
                return pos
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def at(self, where: Path_, message: str, *, key: bool = False) -> Problem:
        """A problem positioned at ``where`` (its key if ``key``), or its nearest parent."""
        line, col = self.position(where, key=key)
        return Problem(self.path, line, col, message)

    def shed(self, origin: Path, specs: dict[str, TaskSpec]) -> None:
        """Drop the position tables and traps of a checked file without problems (``origin``:
        where it was read, ``specs``: the tasks built from it).

        Such a file needs positions only when a problem spanning files points into it; they are
        then read again from ``origin``. Tables read again and used since the last ``shed`` are
        kept, as the problem that wanted them is likely still there.
        """
        asked, self._asked = self._asked, False
        if asked and self._shed is None:
            return
        self.keys, self.values, self.traps = {}, {}, {}
        self._shed = _Shed(origin, specs)

    def _restore(self, shed: _Shed) -> None:
        try:
            raw: bytes | None = read_regular(shed.origin)
        except OSError:
            raw = None
        if raw is not None and hashlib.sha256(raw).hexdigest() == self.digest:
            again = TaskFile(self.path)
            _parse(again, raw)
            self.keys, self.values, self.traps = again.keys, again.values, again.traps
            self._shed = None
            return
        # Not the bytes the tasks were built from: each task's own line is all that still holds.
        own: dict[Path_, tuple[int, int]] = {
            ("tasks", name): (spec.source.line, spec.source.col) for name, spec in shed.specs.items()
        }
        self.keys, self.values = own, dict(own)
        shed.tried = True

    def add(self, where: Path_, message: str, *, key: bool = False) -> None:
        self.problems.append(self.at(where, message, key=key))


_BUILDING, _BUILT = True, False


class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions on the way."""

    def __init__(self, file: TaskFile) -> None:
        self.file = file
        self.seen: dict[int, bool] = {}  # mappings and sequences, by id: _BUILDING or _BUILT
        self.alias: Path_ | None = None  # where the outermost alias being expanded is used
        self.count = 0
        self.chars = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: Node, where: Path_) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _ExpandsTooFar(
                self.alias or where,
                f"more than {_MAX_NODES:,} YAML values, counting what each alias stands for; "
                "split the file, or write fewer values or aliases",
            )
        mark = node.start_mark
        self.file.values[where] = (mark.line + 1, mark.column + 1)
        if isinstance(node, ScalarNode):
            self.chars += len(node.value)
            if self.chars > MAX_EXPANDED_CHARS:
                raise self.expanded_too_far(where)
            return self.scalar(node, where)
        ident = id(node)
        state = self.seen.get(ident)
        if state is _BUILDING:
            self.file.add(where, "recursive alias: an anchor that contains itself")
            return None
        outermost = state is _BUILT and self.alias is None  # reached again: through an alias
        if outermost:
            self.alias = where
        self.seen[ident] = _BUILDING
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ:
                    self.tagged(node, where)
                return [self.build(child, (*where, i)) for i, child in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            if node.tag != _MAP:
                self.tagged(node, where)
            return self.mapping(node, where)
        finally:
            self.seen[ident] = _BUILT
            if outermost:
                self.alias = None

    def expanded_too_far(self, where: Path_) -> _ExpandsTooFar:
        return _ExpandsTooFar(
            self.alias or where,
            f"aliases expand this file to more than {MAX_EXPANDED_CHARS // 2**20} MiB of text; "
            "write the values out, or use fewer aliases",
        )

    def tagged(self, node: Node, where: Path_) -> None:
        self.file.add(where, f"{label(where)}: unsupported YAML tag {_short_tag(node.tag)}; write a plain value")

    def scalar(self, node: ScalarNode, where: Path_) -> Any:
        tag = node.tag
        problem = text_problem(node.value)
        if problem is not None:
            self.file.add(where, f"{label(where)}: {problem}")
            return node.value
        if tag == _STR:
            if not node.style and node.value in _BOOLEAN_WORDS:
                self.file.traps[where] = node.value
            return node.value
        if tag in _SCALAR_TAGS:
            if not node.style and node.value not in _TRUE_FALSE and node.value in _BOOLEAN_WORDS:
                self.file.traps[where] = node.value
                if expects_string(where):
                    return node.value  # reported as a trap; the schema checks the word as written
            try:
                if tag in _NUMBER_TAGS:
                    number = _core_number(node.value, tag)
                    problem = number_problem(number) if _in_parameters(where) else None
                    if problem is not None:
                        self.file.add(where, f"{label(where)}: {problem}")
                    return number
                return self.constructor.construct_object(node, deep=True)
            except (ValueError, KeyError):  # an explicit tag on text it does not fit: !!int x
                self.file.add(where, f"{label(where)}: {node.value!r} is not a valid !!{tag.rpartition(':')[2]}")
                return node.value
        if tag not in _TEXT_TAGS:
            self.tagged(node, where)
        return node.value

    def mapping(self, node: MappingNode, where: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                mark = key_node.start_mark
                self.file.problems.append(
                    Problem(self.file.path, mark.line + 1, mark.column + 1, "a key must be a plain string")
                )
                continue
            key = key_node.value
            self.chars += len(key)
            if self.chars > MAX_EXPANDED_CHARS:
                raise self.expanded_too_far(where)
            mark = key_node.start_mark
            here = (*where, key)
            if key in result:
                first = self.file.keys[here]
                self.file.problems.append(
                    Problem(
                        self.file.path,
                        mark.line + 1,
                        mark.column + 1,
                        f"duplicate key {key!r} (first at line {first[0]}); remove one of them",
                    )
                )
                continue
            self.file.keys[here] = (mark.line + 1, mark.column + 1)
            problem = text_problem(key)
            if problem is not None:
                self.file.add(here, f"{label(where)}: the key {key!r} {problem}", key=True)
            result[key] = self.build(value_node, here)
        for source in merged:
            sources = source.value if isinstance(source, SequenceNode) else [source]
            for item in sources:
                value = self.build(item, where)
                if not isinstance(value, dict):
                    self.file.add(where, "'<<' merges a mapping (or a list of mappings) only")
                    continue
                for key, inner in value.items():
                    result.setdefault(key, inner)
        return result


def _in_parameters(where: Path_) -> bool:
    """Whether ``where`` lies in a task's ``parameters`` (or is a ``-p`` value)."""
    return where[:1] == ("parameters",) or (len(where) > 3 and where[0] == "tasks" and where[2] == "parameters")


def _core_number(text: str, tag: str) -> int | float:
    """A plain scalar the loader resolved as a YAML 1.2 core number, as that number.

    PyYAML's constructors follow YAML 1.1, where a leading ``0`` means octal (``0123`` is 83).
    """
    if tag == _INT:
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)
    lowered = text.lower()
    if lowered.endswith((".inf", ".nan")):
        return float(lowered.replace(".", ""))
    return float(text)


def read_value(text: str, name: str = "value") -> Any:
    """``text`` (the ``-p`` value of parameter ``name``) read as it would be in a task file's
    ``parameters``: YAML 1.2 core numbers, dates kept as text, flow lists and mappings;
    ValueError, naming ``name``, if it is not one YAML value or holds what a task file may not."""
    file = TaskFile("-p")
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        what = " ".join(filter(None, [exc.context, exc.problem]))
        raise ValueError(f"{name}: {text!r} is not a YAML value ({what})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{name}: {text!r} is not a YAML value ({exc})") from None
    if node is None:
        return None
    try:
        value = _Builder(file).build(node, ("parameters", name))
    except (_ExpandsTooFar, RecursionError):
        raise ValueError(f"{name}: the value is too large or too deeply nested") from None
    if file.problems:
        message = file.problems[0].message
        raise ValueError(message.removeprefix("parameters.") if message.startswith("parameters.") else f"{name}: {message}")
    return value


class _Loader(yaml.CSafeLoader):
    """libyaml's parser with the implicit-tag resolver memoized, and YAML 1.2 core numbers.

    The resolver runs in Python for every scalar (a regex per candidate tag); in task files the
    same short scalars (keys, durations, commands) recur thousands of times.
    """

    _tags: ClassVar[dict[tuple[Any, Any, Any], str]] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if value is not None and len(value) > 64:
            return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
        key = (kind, value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
        return tag


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_INT, _CORE_INT, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, _CORE_FLOAT, list("-+.0123456789"))


class _ExpandsTooFar(Exception):
    """What aliases expand to is past a cap; ``where`` uses the alias (or the value) that passed it."""

    def __init__(self, where: Path_, message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


def _short_tag(tag: str) -> str:
    return f"!!{tag[len(_YAML):]}" if tag.startswith(_YAML) else tag


def read_task_file(project: Path, path: Path) -> TaskFile | None:
    """Parse one file with positions; None if it vanished between listing and reading.

    ``path`` may also be what ``list_task_files`` could not look into (a directory it could not
    list, a symlink to nothing): the file then holds the problem.
    """
    rel = path.relative_to(project).as_posix()
    file = TaskFile(rel)
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        try:
            target = os.readlink(path)
        except OSError:
            return None  # not a link to nothing: gone since it was listed
        file.add((), f"cannot read: a symlink to {target!r}, which does not exist; fix or remove the link")
        return file
    except NotRegularFile as exc:
        if exc.kind != "a directory":
            file.add((), f"not a regular file ({exc.kind}); only regular files are read as task files")
            return file
        try:  # listed as a directory: the walk could not list it; say why
            with os.scandir(path):
                pass
        except OSError as cause:
            file.add((), f"cannot read: {cause.strerror or cause}; the task files in it would be missed")
        else:
            file.add((), "cannot read: the directory changed while it was read; try again")
        return file
    except FileTooLarge as exc:
        file.add((), f"file is {exc.size}; task files are capped at {exc.cap} MiB")
        return file
    except OSError as exc:
        file.add((), f"cannot read: {exc.strerror or exc}")
        return file
    _parse(file, raw)
    return file


def _parse(file: TaskFile, raw: bytes) -> None:
    """Fill ``file`` from the bytes read: digest, data and positions, or what is wrong with them."""
    rel = file.path
    file.digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        file.problems.append(
            Problem(rel, line, col, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); task files are UTF-8 YAML")
        )
        return
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        # libyaml gives a byte offset into the UTF-8 text; turn it into line and column.
        data = text.encode("utf-8")
        start = data.rfind(b"\n", 0, exc.position) + 1
        line = data.count(b"\n", 0, exc.position) + 1
        col = len(data[start : exc.position].decode("utf-8", "replace")) + 1
        file.problems.append(
            Problem(rel, line, col, f"YAML error: unacceptable character #x{exc.character:04x}: {exc.reason}")
        )
        return
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(filter(None, [exc.context, exc.problem]))
        file.problems.append(Problem(rel, line, col, f"YAML syntax error: {what}"))
        return
    except yaml.YAMLError as exc:
        file.add((), f"YAML error: {exc}")
        return
    if node is None:
        file.add((), "empty file; a task file holds 'version: 1' and 'tasks:'")
        return
    try:
        file.data = _Builder(file).build(node, ())
    except _ExpandsTooFar as exc:
        file.data = None
        # Where the alias is used: its key (a value reached by an alias has its anchor's place).
        probe = exc.where
        while probe and probe not in file.keys:
            probe = probe[:-1]
        line, col = file.keys.get(probe, (1, 1))
        file.problems.append(Problem(file.path, line, col, f"{label(exc.where)}: {exc.message}"))
    except RecursionError:
        file.data = None
        file.add((), "nesting too deep to read")
    if not isinstance(file.data, dict) and not file.problems:
        names: dict[type, str] = {list: "a list", str: "a string"}
        kind = names.get(type(file.data), type(file.data).__name__)
        file.add((), f"expected a mapping with 'version: 1' and 'tasks:', found {kind}")


def parse_override(text: str) -> tuple[str, Any]:
    """One ``-p KEY=VALUE``: the name and the value, read as the same text would be in a task
    file's ``parameters`` (so ``2026-11-28`` stays a string); ValueError saying what is wrong."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    problem = name_problem(key)
    if problem is not None:
        raise ValueError(f"{problem} (in {text!r})")
    problem = text_problem(raw)
    if problem is not None:
        raise ValueError(f"{key}: the value {problem}")
    # read_value refuses what a task file may not hold (a NUL, .nan); "" read as YAML is null.
    return key, "" if raw == "" else read_value(raw, key)
