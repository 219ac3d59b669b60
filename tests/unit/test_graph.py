"""The needs graph: every cycle found once, and the order a task's needs run in."""

from __future__ import annotations

import pytest

from runner.graph import find_cycles, upstream_order

pytestmark = pytest.mark.timeout(5)


def test_no_cycles_in_a_dag() -> None:
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}) == []


def test_empty_graph() -> None:
    assert find_cycles({}) == []
    assert upstream_order("a", {}) == ["a"]


def test_self_cycle() -> None:
    assert find_cycles({"a": ["a"]}) == [["a", "a"]]


def test_cycle_is_reported_once_from_its_first_name() -> None:
    needs = {"c": ["a"], "a": ["b"], "b": ["c"]}
    assert find_cycles(needs) == [["a", "b", "c", "a"]]


def test_separate_cycles_are_each_reported() -> None:
    needs = {"a": ["b"], "b": ["a"], "x": ["y"], "y": ["z"], "z": ["x"], "ok": ["a"]}
    assert find_cycles(needs) == [["a", "b", "a"], ["x", "y", "z", "x"]]


def test_unknown_names_are_ignored_here() -> None:
    # an unknown name in needs is reported by the spec checks, not as a cycle
    assert find_cycles({"a": ["ghost"], "b": ["a", "ghost"]}) == []


def test_long_chain_does_not_hit_the_recursion_limit() -> None:
    needs = {f"t{i}": [f"t{i + 1}"] for i in range(5000)}
    needs["t5000"] = ["t0"]
    [cycle] = find_cycles(needs)
    assert len(cycle) == 5002
    assert cycle[0] == cycle[-1] == "t0"


def test_upstream_order_puts_every_need_before_its_dependant() -> None:
    needs = {"report": ["add", "fetch"], "add": ["fetch"], "fetch": [], "other": ["report"]}
    assert upstream_order("report", needs) == ["fetch", "add", "report"]


def test_upstream_order_lists_a_shared_need_once() -> None:
    needs = {"top": ["left", "right"], "left": ["base"], "right": ["base"], "base": []}
    order = upstream_order("top", needs)
    assert order == ["base", "left", "right", "top"]


def test_upstream_order_of_a_task_without_needs() -> None:
    assert upstream_order("solo", {"solo": [], "x": ["solo"]}) == ["solo"]
