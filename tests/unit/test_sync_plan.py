"""``runner.syncplan.plan``: how stored tasks become what the files declare. Pure: no store, no files."""

from __future__ import annotations

from typing import Any

import pytest

from runner.models import Source, StoredTask, TaskSpec, TaskType
from runner.syncplan import SyncPlan, Wanted, plan

pytestmark = pytest.mark.timeout(5)

ORPHANED = "orphaned: cannot import plugins.gone: ModuleNotFoundError: No module named 'plugins.gone'"


def spec(name: str, line: int = 3, **fields: Any) -> TaskSpec:
    fields.setdefault("command", f"echo {name}")
    return TaskSpec(name=name, type=TaskType.SHELL, source=Source("tasks.d/a.yaml", line, 3), **fields)


def pyspec(name: str, **fields: Any) -> TaskSpec:
    return TaskSpec(
        name=name, type=TaskType.PYTHON, source=Source("tasks.d/a.yaml", 3, 3),
        callable="plugins.jobs:run", **fields,
    )


def want(s: TaskSpec, reason: str | None = None) -> Wanted:
    """The wanted state: enabled unless a reason says why not."""
    return Wanted(s, reason is None, reason)


def stored(s: TaskSpec, reason: str | None = None, *, removed: bool = False) -> StoredTask:
    """As the store gives it back: the source without a column."""
    back = TaskSpec.from_definition(s.name, Source(s.source.path, s.source.line), s.definition())
    if removed:
        return StoredTask(s.name, back, False, "removed", True)
    return StoredTask(s.name, back, reason is None, reason)


def changes(p: SyncPlan) -> dict[str, list[str]]:
    return {k: v for k, v in p.to_json().items() if v}


def test_nothing_declared_nothing_stored_is_empty() -> None:
    p = plan({}, {})
    assert p.is_empty
    assert p.to_json() == {"added": [], "updated": [], "removed": [], "disabled": [], "enabled": []}


def test_no_change_plan_is_empty() -> None:
    a, b = spec("a"), pyspec("b")
    p = plan(
        {"a": want(a), "b": want(b, ORPHANED), "c": want(spec("c", enabled=False), "declared")},
        {"a": stored(a), "b": stored(b, ORPHANED), "c": stored(spec("c", enabled=False), "declared")},
    )
    assert p.is_empty
    assert changes(p) == {}
    assert (p.inserts, p.updates) == ((), ())


def test_removed_task_that_stays_gone_is_no_change() -> None:
    p = plan({}, {"old": stored(spec("old"), removed=True)})
    assert p.is_empty


def test_new_tasks_are_added_in_name_order() -> None:
    b, a = spec("b"), spec("a")
    p = plan({"b": want(b), "a": want(a)}, {})
    assert changes(p) == {"added": ["a", "b"]}
    assert [w.spec.name for w in p.inserts] == ["a", "b"]
    assert p.updates == ()


def test_new_task_declared_disabled_is_added_and_disabled() -> None:
    s = spec("a", enabled=False)
    p = plan({"a": want(s, "declared")}, {})
    assert changes(p) == {"added": ["a"], "disabled": ["a"]}
    assert p.inserts == (Wanted(s, False, "declared"),)


def test_new_orphaned_task_is_both_added_and_disabled() -> None:
    s = pyspec("job")
    p = plan({"job": want(s, ORPHANED)}, {})
    assert changes(p) == {"added": ["job"], "disabled": ["job"]}
    assert p.inserts == (Wanted(s, False, ORPHANED),)


def test_changed_definition_is_updated() -> None:
    old, new = spec("a", command="echo 1"), spec("a", command="echo 2")
    p = plan({"a": want(new)}, {"a": stored(old)})
    assert changes(p) == {"updated": ["a"]}
    assert p.updates == (want(new),)
    assert p.inserts == ()


@pytest.mark.parametrize(
    "field",
    [
        {"parameters": {"x": 1}},
        {"needs": ("b",)},
        {"timeout": 5.0},
        {"description": "now documented"},
        {"env": {"A": "1"}},
        {"tags": ("nightly",)},
        {"cwd": "sub"},
    ],
)
def test_any_declared_field_counts_as_a_change(field: dict[str, Any]) -> None:
    p = plan({"a": want(spec("a", **field))}, {"a": stored(spec("a"))})
    assert changes(p) == {"updated": ["a"]}


def test_a_task_that_only_moved_is_rewritten_but_not_reported() -> None:
    p = plan({"a": want(spec("a", line=10))}, {"a": stored(spec("a", line=3))})
    assert changes(p) == {}
    assert not p.is_empty
    assert str(p.updates[0].spec.source) == "tasks.d/a.yaml:10"


def test_file_digests_are_stored_only_when_they_changed() -> None:
    a = spec("a")
    same = plan({"a": want(a)}, {"a": stored(a)}, {"tasks.d/a.yaml": "1"}, {"tasks.d/a.yaml": "1"})
    assert same.is_empty
    edited = plan({"a": want(a)}, {"a": stored(a)}, {"tasks.d/a.yaml": "2"}, {"tasks.d/a.yaml": "1"})
    assert changes(edited) == {}
    assert edited.digests == {"tasks.d/a.yaml": "2"}


def test_task_gone_from_the_files_is_removed() -> None:
    p = plan({"a": want(spec("a"))}, {"a": stored(spec("a")), "z": stored(spec("z")), "b": stored(spec("b"))})
    assert changes(p) == {"removed": ["b", "z"]}
    assert not p.is_empty


def test_orphaned_task_is_removed_too_when_gone() -> None:
    p = plan({}, {"job": stored(pyspec("job"), ORPHANED)})
    assert changes(p) == {"removed": ["job"]}


def test_enabled_task_whose_callable_stops_resolving_is_disabled() -> None:
    s = pyspec("job")
    p = plan({"job": want(s, ORPHANED)}, {"job": stored(s)})
    assert changes(p) == {"disabled": ["job"]}
    assert p.updates == (Wanted(s, False, ORPHANED),)


def test_orphaned_task_is_enabled_when_it_resolves_again() -> None:
    s = pyspec("job")
    p = plan({"job": want(s)}, {"job": stored(s, ORPHANED)})
    assert changes(p) == {"enabled": ["job"]}
    assert p.updates == (Wanted(s, True, None),)


def test_invalid_task_is_enabled_when_its_parameters_fit_again() -> None:
    old, new = pyspec("job", parameters={"a": 1}), pyspec("job", parameters={"a": 1, "b": 2})
    p = plan({"job": want(new)}, {"job": stored(old, "invalid: missing parameter 'b' (int)")})
    assert changes(p) == {"updated": ["job"], "enabled": ["job"]}


def test_resolving_again_does_not_enable_a_task_the_file_disables() -> None:
    s = pyspec("job", enabled=False)
    p = plan({"job": want(s, "declared")}, {"job": stored(s, ORPHANED)})
    assert "enabled" not in changes(p)
    assert p.updates == (Wanted(s, False, "declared"),)


def test_a_different_disabled_reason_is_stored_and_listed_as_disabled() -> None:
    s = pyspec("job")
    other = "orphaned: module plugins.jobs has no attribute 'run'"
    p = plan({"job": want(s, other)}, {"job": stored(s, ORPHANED)})
    assert changes(p) == {"disabled": ["job"]}
    assert p.updates == (Wanted(s, False, other),)


def test_declaring_enabled_false_disables_and_true_enables() -> None:
    on, off = spec("a"), spec("a", enabled=False)
    p = plan({"a": want(off, "declared")}, {"a": stored(on)})
    assert changes(p) == {"updated": ["a"], "disabled": ["a"]}
    p = plan({"a": want(on)}, {"a": stored(off, "declared")})
    assert changes(p) == {"updated": ["a"], "enabled": ["a"]}


def test_removed_task_coming_back_is_added_again() -> None:
    s = spec("a")
    p = plan({"a": want(s)}, {"a": stored(s, removed=True)})
    assert changes(p) == {"added": ["a"]}
    # it is the stored row that comes back (its run history with it), so an update, not an insert
    assert (p.inserts, p.updates) == ((), (want(s),))


def test_removed_task_coming_back_orphaned_is_added_and_disabled() -> None:
    s = pyspec("job")
    p = plan({"job": want(s, ORPHANED)}, {"job": stored(s, removed=True)})
    assert changes(p) == {"added": ["job"], "disabled": ["job"]}


def test_removed_task_coming_back_changed_is_added_not_updated() -> None:
    p = plan({"a": want(spec("a", command="echo new"))}, {"a": stored(spec("a"), removed=True)})
    assert changes(p) == {"added": ["a"]}


def test_everything_at_once() -> None:
    keep, edit, gone, back, orphan, fixed = (spec("keep"), spec("edit"), spec("gone"), spec("back"),
                                             pyspec("orphan"), pyspec("fixed"))
    p = plan(
        {
            "keep": want(keep),
            "edit": want(spec("edit", command="echo edited")),
            "back": want(back),
            "orphan": want(orphan, ORPHANED),
            "fixed": want(fixed),
            "new": want(spec("new")),
        },
        {
            "keep": stored(keep),
            "edit": stored(edit),
            "gone": stored(gone),
            "back": stored(back, removed=True),
            "orphan": stored(orphan),
            "fixed": stored(fixed, ORPHANED),
        },
    )
    assert p.to_json() == {
        "added": ["back", "new"],
        "updated": ["edit"],
        "removed": ["gone"],
        "disabled": ["orphan"],
        "enabled": ["fixed"],
    }
    assert [w.spec.name for w in p.inserts] == ["new"]
    assert [w.spec.name for w in p.updates] == ["back", "edit", "fixed", "orphan"]
