"""Read ``tasks.d``: YAML with positions, the JSON Schema, and the checks that span files.

Every problem is collected, never raised one at a time, and each points at the key or value it
is about (``path:line:col``). Nothing here imports a task's callable; see ``project.py``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import Problem
from runner.graph import find_cycles
from runner.inputs import number_problem, text_problem
from runner.models import Retries, Schedule, SecretRef, Source, TaskSpec, TaskType

TASKS_DIR = "tasks.d"
MAX_FILE_BYTES = 50 * 1024 * 1024

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
_DURATION_PART = re.compile(r"\s*((?:\d+(?:\.\d+)?|\.\d+))\s*(ms|d|h|m|s)\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

Path_ = tuple[str | int, ...]


def parse_duration(value: float | int | str) -> float:
    """Seconds in a DURATION (``90s``, ``5m``, ``1h30m``, ``2d``, ``0.5s`` or a number)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if not text:
            raise ValueError(f"{value!r} is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            while pos < len(text):
                match = _DURATION_PART.match(text, pos)
                if not match or match.end() == pos:
                    raise ValueError(
                        f"{value!r} is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)"
                    ) from None
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration")
    return seconds


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
        self.file.add(where, f"{_label(where)}: unsupported YAML tag {_short_tag(node.tag)}; write a plain value")

    def scalar(self, node: ScalarNode, where: Path_) -> Any:
        tag = node.tag
        problem = text_problem(node.value)
        if problem is not None:
            self.file.add(where, f"{_label(where)}: {problem}")
            return node.value
        if tag == _STR:
            if not node.style and node.value in _BOOLEAN_WORDS:
                self.file.traps[where] = node.value
            return node.value
        if tag in _SCALAR_TAGS:
            if not node.style and node.value not in _TRUE_FALSE and node.value in _BOOLEAN_WORDS:
                self.file.traps[where] = node.value
                if _expects_string(where):
                    return node.value  # reported as a trap; the schema checks the word as written
            try:
                if tag in _NUMBER_TAGS:
                    number = _core_number(node.value, tag)
                    problem = number_problem(number) if _in_parameters(where) else None
                    if problem is not None:
                        self.file.add(where, f"{_label(where)}: {problem}")
                    return number
                return self.constructor.construct_object(node, deep=True)
            except (ValueError, KeyError):  # an explicit tag on text it does not fit: !!int x
                self.file.add(where, f"{_label(where)}: {node.value!r} is not a valid !!{tag.rpartition(':')[2]}")
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
                self.file.add(here, f"{_label(where)}: the key {key!r} {problem}", key=True)
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
        file.add((), f"file is {exc.size}; task files are capped at {MAX_FILE_BYTES // 2**20} MiB")
        return file
    except OSError as exc:
        file.add((), f"cannot read: {exc.strerror or exc}")
        return file
    _parse(file, raw)
    return file


class NotRegularFile(OSError):
    """A path that is not a regular file (a FIFO, a device, a directory), left unopened or unread."""

    def __init__(self, path: Path, mode: int) -> None:
        kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                 stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}
        self.kind = kinds.get(stat.S_IFMT(mode), "something else")
        super().__init__(f"{path}: not a regular file ({self.kind})")


class FileTooLarge(OSError):
    """A file past the cap; ``size`` says how large, as far as it was read."""

    def __init__(self, path: Path, size: str) -> None:
        self.size = size
        super().__init__(f"{path}: file is {size}; the cap is {MAX_FILE_BYTES // 2**20} MiB")


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), reading at most the cap.

    Anything else is refused before it is read: opening a FIFO waits for a writer, and a device
    such as /dev/zero never ends. The ``stat`` keeps such paths unopened; the ``fstat`` of the
    open file is what counts, should the path be replaced in between.
    """
    if not stat.S_ISREG(mode := os.stat(path).st_mode):
        raise NotRegularFile(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(path, info.st_mode)
        if info.st_size > MAX_FILE_BYTES:
            raise FileTooLarge(path, f"{info.st_size / 1e6:.1f} MB")
        chunks: list[bytes] = []
        size = 0
        while True:  # till the end: the file may have grown since the fstat
            chunk = os.read(fd, min(max(info.st_size + 1 - size, 1 << 16), MAX_FILE_BYTES + 1 - size))
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise FileTooLarge(path, f"more than {MAX_FILE_BYTES // 2**20} MiB")
            chunks.append(chunk)
    finally:
        os.close(fd)


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
        file.problems.append(Problem(file.path, line, col, f"{_label(exc.where)}: {exc.message}"))
    except RecursionError:
        file.data = None
        file.add((), "nesting too deep to read")
    if not isinstance(file.data, dict) and not file.problems:
        names: dict[type, str] = {list: "a list", str: "a string"}
        kind = names.get(type(file.data), type(file.data).__name__)
        file.add((), f"expected a mapping with 'version: 1' and 'tasks:', found {kind}")


def list_task_files(project: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``tasks.d``, any depth, in sorted path order; and what
    may hide some: a directory that cannot be listed, a symlink to nothing (whatever its name),
    for ``read_task_file`` to report, so their tasks are not taken for removed.

    Directory symlinks are followed once each, so a symlink loop ends the walk instead of looping.
    """
    root = project / TASKS_DIR
    found: list[Path] = []
    seen_dirs = {os.path.realpath(root)}
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except OSError:
            found.append(Path(directory))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real not in seen_dirs:
                    seen_dirs.add(real)
                    pending.append(entry.path)
            elif entry.name.endswith((".yaml", ".yml")) or (entry.is_symlink() and not os.path.exists(entry.path)):
                found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def schema_file() -> Path:
    """The task-file JSON Schema's file, in the installed package or the source checkout."""
    here = Path(__file__).parent
    for candidate in (here / "tasks.schema.json", here.parent / "schemas" / "tasks.schema.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("tasks.schema.json is missing from the runner installation")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The task-file JSON Schema."""
    schema: dict[str, Any] = json.loads(schema_file().read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema())


def _label(where: Path_) -> str:
    if len(where) >= 2 and where[0] == "tasks":
        rest = ".".join(repr(p) if isinstance(p, str) and text_problem(p) else str(p) for p in where[2:])
        return f"task {where[1]!r}" + (f": {rest}" if rest else "")
    return ".".join(str(p) for p in where) or "file"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _schema_problems(file: TaskFile, error: Any) -> Iterator[Problem]:
    where: Path_ = tuple(error.absolute_path)
    kind = error.validator
    if kind == "pattern" and isinstance(error.instance, str) and text_problem(error.instance):
        return  # reported where the file was read, with a message that says what
    schema = error.schema if isinstance(error.schema, dict) else {}
    label = _label(where)
    defs = load_schema()["$defs"]
    if (kind == "pattern" and schema == defs["duration"]["then"]) or (
        kind in ("type", "minimum") and schema == defs["duration"]["else"]
    ):
        yield file.at(where, f"{label}: {error.instance!r} is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)")
        return
    if kind == "pattern" and where[-1:] == ("cwd",):
        yield file.at(where, f"{label}: {error.instance!r} is not a path inside the project: write it relative to the project directory, without '..'")
        return
    if kind == "pattern" and where[-1:] == ("from_file",):
        yield file.at(where, f"{label}: {error.instance!r} leaves the project: write an absolute path, or one relative to the project directory without '..'")
        return
    if kind is None and error.schema is False and len(where) == 2 and where[0] == "tasks":
        # a key the task's type forbids (the schema's `then`/`else` on `type`); jsonschema
        # leaves the key out of the paths of a `false` schema's error, but `then` is python's
        if "then" in error.relative_schema_path:
            yield file.at((*where, "command"), f"{label}: a python task takes 'callable', not 'command'", key=True)
        else:
            yield file.at((*where, "callable"), f"{label}: 'callable' needs 'type: python'", key=True)
        return
    if kind == "oneOf" and where[-1:] == ("schedule",) and isinstance(error.instance, dict):
        if any(key not in schema.get("properties", {}) for key in error.instance):
            return  # a misspelt key: its own problem says which it may have meant
        if "cron" in error.instance and "every" in error.instance:
            yield file.at((*where, "every"), f"{label}: give 'cron' or 'every', not both", key=True)
        else:
            yield file.at(where, f"{label}: needs 'cron' (a cron expression) or 'every' (a DURATION)")
        return
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        for key in error.instance:
            if key in known or not isinstance(key, str):
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
            yield file.at((*where, key), f"{label}: unknown key {key!r}{hint}", key=True)
        return
    if "propertyNames" in error.relative_schema_path:
        name = error.instance
        if where == ("tasks",):
            message = (
                f"invalid task name {name!r}: use 1-100 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        else:
            message = f"{label}: invalid name {name!r}: use letters, digits and '_', not starting with a digit"
        yield file.at((*where, name), message, key=True)
        return
    if kind == "required" and "dependentSchemas" in error.relative_schema_path:
        yield file.at((*where, "timezone"), f"{label}: 'timezone' goes with 'cron' ('every' needs none)", key=True)
        return
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        what = {"command": "a shell task needs a 'command'", "callable": "a python task needs a 'callable'"}
        detail = what.get(missing) if len(where) == 2 and where[0] == "tasks" else None
        yield file.at(where, f"{label}: {detail or f'missing required key {missing!r}'}", key=True)
        return
    if kind == "type":
        expected = schema.get("type")
        want = " or ".join(expected) if isinstance(expected, list) else expected
        want = {"object": "a mapping", "array": "a list", "string": "a string", "boolean": "true or false",
                "integer": "an integer", "number": "a number"}.get(str(want), str(want))
        yield file.at(where, f"{label}: expected {want}, found {_describe(error.instance)}")
        return
    if kind == "const" and where == ("version",):
        yield file.at(where, f"version must be 1, found {error.instance!r}")
        return
    if kind == "enum":
        options = ", ".join(str(o) for o in schema.get("enum", []))
        yield file.at(where, f"{label}: {error.instance!r} is not one of: {options}")
        return
    if kind == "pattern" and where and where[-2:-1] == ("needs",):
        yield file.at(where, f"{label}: {error.instance!r} is not a valid task name")
        return
    if kind == "pattern" and where[-1:] == ("callable",):
        yield file.at(where, f"{label}: {error.instance!r} is not 'module:qualname' or a registered name")
        return
    yield file.at(where, f"{label}: {error.message}")


def _expects_string(where: Path_) -> bool:
    """Whether the schema wants a string at ``where`` (so a plain ``no`` there is a trap)."""
    if len(where) < 3 or where[0] != "tasks":
        return False
    field_, depth = where[2], len(where)
    if field_ in ("description", "callable", "cwd", "type"):
        return depth == 3
    if field_ in ("command", "needs", "tags"):
        return depth <= 4
    if field_ == "env":
        return depth == 4
    if field_ == "schedule":
        return depth == 3 or (depth == 4 and where[3] in ("cron", "timezone", "misfire", "overlap"))
    return False


def check_file(file: TaskFile) -> dict[str, TaskSpec]:
    """Validate a parsed file against the schema and build its tasks; problems go to the file."""
    if not isinstance(file.data, dict):
        return {}
    trapped = {w for w in file.traps if _expects_string(w)}
    for where in sorted(trapped, key=lambda w: file.values.get(w, (0, 0))):
        word = file.traps[where]
        file.add(
            where,
            f'{_label(where)}: plain {word!r} is a boolean in YAML 1.1; quote it ("{word}") if you mean the string',
        )
    from runner.precheck import plainly_valid

    broken: set[str] = set()
    errors = () if plainly_valid(file.data) else _validator().iter_errors(file.data)
    for error in errors:
        where = tuple(error.absolute_path)
        if any(where[: len(t)] == t for t in trapped):
            broken.update(str(t[1]) for t in trapped)
            continue
        file.problems.extend(_schema_problems(file, error))
        if len(where) >= 2 and where[0] == "tasks":
            broken.add(str(where[1]))
        elif where == ("tasks",) and "propertyNames" in error.relative_schema_path:
            broken.add(str(error.instance))
    broken.update(str(t[1]) for t in trapped)
    tasks = file.data.get("tasks")
    if not isinstance(tasks, dict):
        return {}
    specs = {}
    for name, body in tasks.items():
        if name in broken:
            continue
        spec = _build_spec(file, name, body)
        if spec is not None:
            specs[name] = spec
    return specs


def _build_spec(file: TaskFile, name: str, body: dict[str, Any]) -> TaskSpec | None:
    where: Path_ = ("tasks", name)
    ok = True

    def duration(key: Path_, value: Any, *, positive: bool) -> float | None:
        nonlocal ok
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            file.add((*where, *key), f"{_label((*where, *key))}: {exc}")
            ok = False
            return None
        if positive and seconds <= 0:
            file.add((*where, *key), f"{_label((*where, *key))}: must be more than 0")
            ok = False
        return seconds

    schedule = None
    raw_schedule = body.get("schedule")
    if raw_schedule is not None:
        from runner.schedule import check_timezone, normalize_cron

        policy = {k: raw_schedule[k] for k in ("misfire", "overlap") if isinstance(raw_schedule, dict) and k in raw_schedule}
        if isinstance(raw_schedule, dict) and "every" in raw_schedule:
            every = duration(("schedule", "every"), raw_schedule["every"], positive=True)
            schedule = Schedule(every=every, **policy)
        else:
            cron = raw_schedule if isinstance(raw_schedule, str) else raw_schedule["cron"]
            tz = raw_schedule.get("timezone", "UTC") if isinstance(raw_schedule, dict) else "UTC"
            at: Path_ = ("schedule",) if isinstance(raw_schedule, str) else ("schedule", "cron")
            try:
                cron = normalize_cron(cron)
            except ValueError as exc:
                file.add((*where, *at), f"{_label(where)}: {exc}")
                ok = False
            try:
                check_timezone(tz)
            except ValueError as exc:
                file.add((*where, "schedule", "timezone"), f"{_label(where)}: {exc}")
                ok = False
            schedule = Schedule(cron=cron, timezone=tz, **policy)

    timeout = None
    if body.get("timeout") is not None:
        timeout = duration(("timeout",), body["timeout"], positive=True)
    raw_retries = body.get("retries", 0)
    if isinstance(raw_retries, dict):
        backoff = duration(("retries", "backoff"), raw_retries.get("backoff", 0), positive=False)
        retries = Retries(raw_retries["count"], backoff or 0.0)
    else:
        retries = Retries(raw_retries)
    if not ok:
        return None
    command = body.get("command")
    key_line, key_col = file.keys.get(where, (1, 1))
    return TaskSpec(
        name=name,
        type=TaskType(body.get("type", "shell")),
        source=Source(file.path, key_line, key_col),
        command=tuple(command) if isinstance(command, list) else command,
        callable=body.get("callable"),
        parameters=body.get("parameters") or {},
        enabled=body.get("enabled", True),
        description=body.get("description"),
        needs=tuple(body.get("needs") or ()),
        schedule=schedule,
        timeout=timeout,
        retries=retries,
        env={k: SecretRef(**v) if isinstance(v, dict) else v for k, v in (body.get("env") or {}).items()},
        cwd=body.get("cwd"),
        tags=tuple(body.get("tags") or ()),
        concurrency=body.get("concurrency"),
        queue=body.get("queue"),
    )


@dataclass
class Declared:
    """Every task the files declare, and every problem with them."""

    specs: dict[str, TaskSpec]
    files: dict[str, TaskFile]
    owner: dict[str, TaskFile]
    problems: list[Problem]

    def at(self, task: str, *where: str | int, message: str, key: bool = False) -> Problem:
        """A problem about ``task`` positioned at one of its keys or values.

        Tasks taken from the store rather than parsed have only their source line to point at.
        """
        owner = self.owner.get(task)
        if owner is None:
            source = self.specs[task].source
            return Problem(source.path, source.line, source.col, message)
        return owner.at(("tasks", task, *where), message, key=key)

    @property
    def digests(self) -> dict[str, str]:
        """Each file's digest, when every file was read whole (else empty: nothing to reuse)."""
        found = {path: file.digest for path, file in self.files.items() if file.digest}
        return found if len(found) == len(self.files) else {}


def fingerprint(project: Path) -> dict[str, str] | None:
    """Each task file's SHA-256, by path; None if one cannot be read, or there is no tasks.d
    (so the caller parses the files and reports the problem)."""
    if not (project / TASKS_DIR).is_dir():
        return None
    found = {}
    for path in list_task_files(project):
        try:
            found[path.relative_to(project).as_posix()] = hashlib.sha256(read_regular(path)).hexdigest()
        except OSError:
            return None
    return found


@dataclass
class _Checked:
    """One file as ``check_file`` left it, with its own problems (before cross-file checks)."""

    file: TaskFile
    specs: dict[str, TaskSpec]
    problems: list[Problem]


ParseCache = dict[str, _Checked]
"""Checked files by path, for ``load_tasks`` to reuse while their bytes stay the same."""


def load_tasks(project: Path, cache: ParseCache | None = None) -> Declared:
    """Read and check every task file of ``project``; the result lists all problems at once.

    With a ``cache`` (kept by the caller between calls, as the daemon does), a file whose bytes
    have not changed since the last call is not parsed or checked again.
    """
    root = project / TASKS_DIR
    if not root.is_dir():
        problem = Problem(
            TASKS_DIR, 1, 1,
            f"no {TASKS_DIR}/ directory in {project}; run from your project directory or pass --project DIR",
        )
        return Declared({}, {}, {}, [problem])
    with gc_paused():
        return _load_tasks(project, cache)


def _checked_file(project: Path, path: Path, cache: ParseCache | None) -> _Checked | None:
    if cache is not None:
        rel = path.relative_to(project).as_posix()
        cached = cache.get(rel)
        if cached is not None and cached.file.digest is not None:
            try:
                same = hashlib.sha256(read_regular(path)).hexdigest() == cached.file.digest
            except OSError:
                same = False
            if same:
                cached.file.problems = list(cached.problems)
                if not cached.problems:
                    cached.file.shed(path, cached.specs)
                return cached
    file = read_task_file(project, path)
    if file is None:
        return None
    checked = _Checked(file, check_file(file), list(file.problems))
    if cache is not None:
        cache[file.path] = checked
        if not checked.problems:
            file.shed(path, checked.specs)
    return checked


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while task files are loaded and synced.

    Node trees, position maps and task records are many small objects that all live until the
    end; the collector would walk them again and again for nothing (10-15% of a cold sync).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _load_tasks(project: Path, cache: ParseCache | None) -> Declared:
    specs: dict[str, TaskSpec] = {}
    files: dict[str, TaskFile] = {}
    owner: dict[str, TaskFile] = {}
    problems: list[Problem] = []
    for path in list_task_files(project):
        checked = _checked_file(project, path, cache)
        if checked is None:
            continue
        file, file_specs = checked.file, checked.specs
        files[file.path] = file
        tasks = file.data.get("tasks") if isinstance(file.data, dict) else None
        for name in tasks if isinstance(tasks, dict) else ():
            first = owner.get(name)
            if first is not None:
                here = file.position(("tasks", name), key=True)
                there = first.position(("tasks", name), key=True)
                first.add(("tasks", name), f"task {name!r} is also declared at {file.path}:{here[0]}", key=True)
                file.add(("tasks", name), f"task {name!r} is already declared at {first.path}:{there[0]}", key=True)
                specs.pop(name, None)
                continue
            owner[name] = file
            if name in file_specs:
                specs[name] = file_specs[name]
    declared = Declared(specs, files, owner, problems)
    needs = {name: _raw_needs(file, name) for name, file in owner.items()}
    for name, wanted in needs.items():
        for i, need in enumerate(wanted):
            if need not in owner:
                close = difflib.get_close_matches(need, list(owner), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    declared.at(name, "needs", i, message=f"task {name!r} needs {need!r}, which is not declared{hint}")
                )
    problems.extend(
        declared.at(cycle[0], "needs", message=f"cycle in needs: {' -> '.join(cycle)}", key=True)
        for cycle in find_cycles(needs)
    )
    for file in files.values():
        problems.extend(file.problems)
    problems.sort()
    if cache is not None:
        for gone in set(cache) - set(files):
            del cache[gone]
    return declared


def _raw_needs(file: TaskFile, name: str) -> list[str]:
    """The names a task's ``needs`` lists, read even from a task with other errors."""
    body = file.data["tasks"][name]
    wanted = body.get("needs") if isinstance(body, dict) else None
    if not isinstance(wanted, list):
        return []
    return [w if isinstance(w, str) else str(w) for w in wanted]
