"""Task files: parsing with positions, the schema, YAML 1.1 traps, durations, cross-file checks.

Files are real files under ``tmp_path``; every problem is asserted as the user sees it,
``path:line:col: message``, with the exact position of the key or value it is about.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ProjectDir

from runner import files as files_module
from runner import spec as spec_module
from runner import taskfile as taskfile_module
from runner.files import list_task_files
from runner.models import Retries, Schedule, Source, TaskType
from runner.spec import load_tasks, parse_duration
from runner.taskfile import read_task_file

pytestmark = pytest.mark.timeout(10)


def problems(project: ProjectDir) -> list[str]:
    return [str(p) for p in load_tasks(project.root).problems]


# -- a valid project -------------------------------------------------------------------------


def test_spec_example_builds_normalised_tasks(project: ProjectDir) -> None:
    project.tasks(
        "example.yaml",
        """
        # yaml-language-server: $schema=../schemas/tasks.schema.json
        version: 1
        tasks:
          hello:
            command: echo "hello from runner"
          add:
            type: python
            callable: plugins.examples:add
            parameters: {a: 10, b: 32}
          report:
            type: python
            callable: plugins.reports:daily
            needs: [add]
            schedule: {cron: "30 2 * * *", timezone: Europe/Oslo}
            timeout: 5m
            retries: {count: 3, backoff: 10s}
            enabled: false
          argv:
            command: [printf, "%s", "a b"]
            description: runs without a shell
            env: {MODE: fast, TOKEN: {from_env: MY_TOKEN}}
            cwd: sub
            tags: [fast, nightly]
            retries: 2
            schedule: {every: 1h30m}
        """,
    )
    declared = load_tasks(project.root)
    assert declared.problems == []
    specs = declared.specs
    assert list(specs) == ["hello", "add", "report", "argv"]

    hello = specs["hello"]
    assert hello.type is TaskType.SHELL
    assert hello.command == 'echo "hello from runner"'
    assert hello.enabled is True
    assert hello.source == Source("tasks.d/example.yaml", 4, 3)

    add = specs["add"]
    assert add.type is TaskType.PYTHON
    assert add.callable == "plugins.examples:add"
    assert dict(add.parameters) == {"a": 10, "b": 32}

    report = specs["report"]
    assert report.needs == ("add",)
    assert report.schedule == Schedule(cron="30 2 * * *", timezone="Europe/Oslo")
    assert report.timeout == 300.0
    assert report.retries == Retries(3, 10.0)
    assert report.enabled is False

    argv = specs["argv"]
    assert argv.command == ("printf", "%s", "a b")
    assert argv.description == "runs without a shell"
    assert argv.env["MODE"] == "fast"
    assert argv.env["TOKEN"].from_env == "MY_TOKEN"  # type: ignore[union-attr]
    assert argv.cwd == "sub"
    assert argv.tags == ("fast", "nightly")
    assert argv.retries == Retries(2, 0.0)
    assert argv.schedule == Schedule(every=5400.0)


def test_no_tasks_dir_is_one_problem_that_says_what_to_do(tmp_path: Path) -> None:
    [problem] = load_tasks(tmp_path).problems
    assert (problem.path, problem.line, problem.col) == ("tasks.d", 1, 1)
    assert "no tasks.d/ directory" in problem.message
    assert "--project" in problem.message


def test_an_empty_tasks_dir_is_valid_and_declares_nothing(project: ProjectDir) -> None:
    declared = load_tasks(project.root)
    assert (declared.specs, declared.problems) == ({}, [])


# -- every problem at once, each at its key or value -------------------------------------------


def test_every_problem_in_every_file_is_reported_at_once(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          build:
            comand: make
          lint:
            command: ruff
            timeout: soon
          deploy:
            command: ./deploy
            needs: [biuld]
        """,
    )
    project.tasks(
        "b.yaml",
        """
        version: 1
        tasks:
          test:
            type: pithon
            command: pytest
          ok:
            command: "true"
        """,
    )
    assert problems(project) == [
        "tasks.d/a.yaml:3:3: task 'build': a shell task needs a 'command'",
        "tasks.d/a.yaml:4:5: task 'build': unknown key 'comand' (did you mean 'command'?)",
        "tasks.d/a.yaml:7:14: task 'lint': timeout: 'soon' is not a duration"
        " (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)",
        "tasks.d/a.yaml:10:13: task 'deploy' needs 'biuld', which is not declared"
        " (did you mean 'build'?)",
        "tasks.d/b.yaml:4:11: task 'test': type: 'pithon' is not one of: shell, python",
    ]


def test_yaml_syntax_error_points_at_where_the_parser_stopped(project: ProjectDir) -> None:
    project.tasks(
        "bad.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo
           b: x
        """,
    )
    project.tasks("good.yaml", "version: 1\ntasks:\n  c:\n    command: echo\n")
    declared = load_tasks(project.root)
    assert [str(p) for p in declared.problems] == [
        "tasks.d/bad.yaml:5:4: YAML syntax error: while parsing a block mapping"
        " did not find expected key"
    ]
    assert list(declared.specs) == ["c"]


def test_unclosed_flow_sequence_is_a_syntax_error(project: ProjectDir) -> None:
    project.tasks("a.yaml", 'version: 1\ntasks:\n  a:\n    command: [echo, "x"\n')
    [problem] = problems(project)
    assert problem.startswith("tasks.d/a.yaml:5:1: YAML syntax error: ")
    assert "flow sequence" in problem


def test_unknown_top_level_key_is_suggested(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\ntask:\n  a:\n    command: echo\n")
    assert problems(project) == [
        "tasks.d/a.yaml:1:1: file: missing required key 'tasks'",
        "tasks.d/a.yaml:2:1: file: unknown key 'task' (did you mean 'tasks'?)",
    ]


def test_unknown_key_without_a_close_match_lists_the_known_keys(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n    colour: red\n")
    [problem] = problems(project)
    assert problem.startswith("tasks.d/a.yaml:5:5: task 'a': unknown key 'colour' (known keys: type,")


def test_wrong_version_is_named(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 2\ntasks: {}\n")
    assert problems(project) == ["tasks.d/a.yaml:1:10: version must be 1, found 2"]


def test_duplicate_keys_are_errors_not_silently_won(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo one
            command: echo two
          b:
            command: echo
          b:
            command: echo again
        """,
    )
    assert problems(project) == [
        "tasks.d/a.yaml:5:5: duplicate key 'command' (first at line 4); remove one of them",
        "tasks.d/a.yaml:8:3: duplicate key 'b' (first at line 6); remove one of them",
    ]


def test_task_declared_in_two_files_names_both_places(project: ProjectDir) -> None:
    project.tasks("one.yaml", "version: 1\ntasks:\n  x:\n    command: echo\n  a:\n    command: echo 1\n")
    project.tasks("two.yml", "version: 1\ntasks:\n  a:\n    command: echo 2\n")
    declared = load_tasks(project.root)
    assert [str(p) for p in declared.problems] == [
        "tasks.d/one.yaml:5:3: task 'a' is also declared at tasks.d/two.yml:3",
        "tasks.d/two.yml:3:3: task 'a' is already declared at tasks.d/one.yaml:5",
    ]
    assert list(declared.specs) == ["x"]


def test_needs_naming_an_unknown_task(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo
            needs: [zzz]
        """,
    )
    assert problems(project) == ["tasks.d/a.yaml:5:13: task 'a' needs 'zzz', which is not declared"]


def test_needs_may_name_a_task_in_another_file(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n    needs: [b]\n")
    project.tasks("b.yaml", "version: 1\ntasks:\n  b:\n    command: echo\n")
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert declared.specs["a"].needs == ("b",)


def test_cycles_are_printed_and_placed_at_needs(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo
            needs: [b]
          b:
            command: echo
            needs: [c]
          c:
            command: echo
            needs: [a]
          self:
            command: echo
            needs: [self]
        """,
    )
    assert problems(project) == [
        "tasks.d/a.yaml:5:5: cycle in needs: a -> b -> c -> a",
        "tasks.d/a.yaml:14:5: cycle in needs: self -> self",
    ]


def test_cycle_across_files(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n    needs: [b]\n")
    project.tasks("b.yaml", "version: 1\ntasks:\n  b:\n    command: echo\n    needs: [a]\n")
    assert problems(project) == ["tasks.d/a.yaml:5:5: cycle in needs: a -> b -> a"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("type: python\n    command: echo",
         ["3:3: task 't': a python task needs a 'callable'",
          "5:5: task 't': a python task takes 'callable', not 'command'"]),
        ("command: echo\n    callable: m:f", ["5:5: task 't': 'callable' needs 'type: python'"]),
        ("type: python\n    callable: not a ref",
         ["5:15: task 't': callable: 'not a ref' is not 'module:qualname' or a registered name"]),
        ('command: ""', ["4:14: task 't': command: '' should be non-empty"]),
        ("command: [echo, 3]", ["4:21: task 't': command.1: expected a string, found a number"]),
        ("command: 5", ["4:14: task 't': command: expected a string, found a number"]),
        ("command: echo\n    enabled: maybe",
         ["5:14: task 't': enabled: expected true or false, found a string"]),
        ("command: echo\n    parameters: [1]",
         ["5:17: task 't': parameters: expected a mapping, found a list"]),
        ("command: echo\n    retries: -1", ["5:14: task 't': retries: -1 is less than the minimum of 0"]),
        ("command: echo\n    retries: {count: 1.5}",
         ["5:22: task 't': retries.count: expected an integer, found a number"]),
        ("command: echo\n    env: {X: {from_env: 1}}",
         ["5:25: task 't': env.X.from_env: expected a string, found a number"]),
        ("command: echo\n    tags: [a, a]", ["5:11: task 't': tags: ['a', 'a'] has non-unique elements"]),
        ("command: echo\n    timeout: true", ["5:14: task 't': timeout: True is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)"]),
        ("command: echo\n    cwd: /etc",
         ["5:10: task 't': cwd: '/etc' is not a path inside the project: write it relative to the project directory, without '..'"]),
        ("command: echo\n    cwd: sub/../..",
         ["5:10: task 't': cwd: 'sub/../..' is not a path inside the project: write it relative to the project directory, without '..'"]),
        ("command: echo\n    env: {X: {from_file: ../up/secret}}",
         ["5:26: task 't': env.X.from_file: '../up/secret' leaves the project: write an absolute path, or one relative to the project directory without '..'"]),
    ],
)
def test_schema_problems_point_at_the_offending_value(
    project: ProjectDir, body: str, expected: list[str]
) -> None:
    project.tasks("a.yaml", f"version: 1\ntasks:\n  t:\n    {body}\n")
    assert problems(project) == [f"tasks.d/a.yaml:{e}" for e in expected]


@pytest.mark.parametrize(
    "body",
    ["cwd: scripts", "cwd: a/b..c/d", "cwd: ./out", "env: {X: {from_file: /run/secrets/x}}", "env: {X: {from_file: s/x}}"],
)
def test_paths_inside_the_project_and_absolute_secret_files_are_accepted(project: ProjectDir, body: str) -> None:
    project.tasks("a.yaml", f"version: 1\ntasks:\n  t:\n    command: echo\n    {body}\n")
    assert problems(project) == []


def test_invalid_task_names(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          "a/b":
            command: echo
          _hidden:
            command: echo
          ok:
            command: echo
        """,
    )
    declared = load_tasks(project.root)
    rule = "use 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
    assert [str(p) for p in declared.problems] == [
        f"tasks.d/a.yaml:3:3: invalid task name 'a/b': {rule}",
        f"tasks.d/a.yaml:5:3: invalid task name '_hidden': {rule}",
    ]
    assert list(declared.specs) == ["ok"]


def test_a_name_of_100_characters_is_the_longest(project: ProjectDir) -> None:
    project.tasks("a.yaml", f"version: 1\ntasks:\n  {'x' * 100}:\n    command: echo\n  {'y' * 101}:\n    command: echo\n")
    declared = load_tasks(project.root)
    assert list(declared.specs) == ["x" * 100]
    [problem] = declared.problems
    assert (problem.line, problem.col) == (5, 3)


# -- YAML 1.1 traps ----------------------------------------------------------------------------


def test_keys_are_always_strings_so_off_and_yes_are_task_names(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          off:
            command: echo off
          yes:
            command: echo yes
          on:
            command: echo on
            needs: ["off", "yes"]
            parameters: {no: 1, y: 2}
        """,
    )
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert list(declared.specs) == ["off", "yes", "on"]
    assert declared.specs["on"].needs == ("off", "yes")
    assert dict(declared.specs["on"].parameters) == {"no": 1, "y": 2}


@pytest.mark.parametrize(
    ("line", "where", "word", "col"),
    [
        ("description: no", "description", "no", 18),
        ("description: Off", "description", "Off", 18),
        ("cwd: YES", "cwd", "YES", 10),
        ("tags: [on]", "tags.0", "on", 12),
        ("env: {X: off}", "env.X", "off", 14),
        ("schedule: {cron: '* * * * *', timezone: no}", "schedule.timezone", "no", 45),
    ],
)
def test_plain_boolean_word_where_a_string_is_expected_is_an_error(
    project: ProjectDir, line: str, where: str, word: str, col: int
) -> None:
    project.tasks("a.yaml", f"version: 1\ntasks:\n  t:\n    command: echo\n    {line}\n")
    declared = load_tasks(project.root)
    assert [str(p) for p in declared.problems] == [
        f"tasks.d/a.yaml:5:{col}: task 't': {where}: plain {word!r} is a boolean in YAML 1.1;"
        f' quote it ("{word}") if you mean the string'
    ]
    assert declared.specs == {}


def test_boolean_word_inside_a_command_list_is_one_problem_not_two(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  t:\n    command: [echo, yes]\n")
    assert problems(project) == [
        "tasks.d/a.yaml:4:21: task 't': command.1: plain 'yes' is a boolean in YAML 1.1;"
        ' quote it ("yes") if you mean the string'
    ]


def test_quoted_boolean_words_and_real_booleans_are_fine(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          t:
            command: [echo, "yes", 'no']
            description: "no"
            enabled: false
            parameters: {flag: no, other: true}
        """,
    )
    declared = load_tasks(project.root)
    assert declared.problems == []
    t = declared.specs["t"]
    assert (t.command, t.description, t.enabled) == (("echo", "yes", "no"), "no", False)
    # parameters are free-form values: YAML's booleans are booleans there
    assert dict(t.parameters) == {"flag": False, "other": True}


def test_yaml_1_1_numbers_and_dates_stay_as_written_where_a_string_is_expected(
    project: ProjectDir,
) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  t:\n    command: echo\n    description: 2024-01-01\n")
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert declared.specs["t"].description == "2024-01-01"


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("0.5s", 0.5),
        (".5s", 0.5),
        ("250ms", 0.25),
        ("45", 45.0),
        ("2.5", 2.5),
        (10, 10.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "  ", "5x", "m", "1.5.2s", "5m5", "-5s", "-5", "inf", "nan", "0x10", True, -1]
)
def test_parse_duration_rejects(value: str | float) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


def test_durations_in_files(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo
            timeout: 90s
            retries: {count: 1, backoff: 0.5s}
          b:
            command: echo
            timeout: 12
          c:
            command: echo
            timeout: 0
          d:
            command: echo
            timeout: 5x
          e:
            command: echo
            retries: {count: 2, backoff: -1}
        """,
    )
    declared = load_tasks(project.root)
    hint = "is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)"
    assert [str(p) for p in declared.problems] == [
        "tasks.d/a.yaml:12:14: task 'c': timeout: must be more than 0",
        f"tasks.d/a.yaml:15:14: task 'd': timeout: '5x' {hint}",
        f"tasks.d/a.yaml:18:34: task 'e': retries.backoff: -1 {hint}",
    ]
    assert declared.specs["a"].timeout == 90.0
    assert declared.specs["a"].retries == Retries(1, 0.5)
    assert declared.specs["b"].timeout == 12.0


# -- schedules ---------------------------------------------------------------------------------


def test_schedule_forms(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          plain:
            command: echo
            schedule: "*/5  *  * * *"
          zoned:
            command: echo
            schedule: {cron: "30 2 * * *", timezone: Europe/Oslo}
          utc:
            command: echo
            schedule: {cron: "0 0 * * 1"}
          alias:
            command: echo
            schedule: "@daily"
          every:
            command: echo
            schedule: {every: 2d}
        """,
    )
    declared = load_tasks(project.root)
    assert declared.problems == []
    schedules = {name: s.schedule for name, s in declared.specs.items()}
    assert schedules == {
        "plain": Schedule(cron="*/5 * * * *", timezone="UTC"),
        "zoned": Schedule(cron="30 2 * * *", timezone="Europe/Oslo"),
        "utc": Schedule(cron="0 0 * * 1", timezone="UTC"),
        "alias": Schedule(cron="0 0 * * *", timezone="UTC"),
        "every": Schedule(every=172800.0),
    }


def test_bad_schedules_point_at_the_bad_part(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          minute:
            command: echo
            schedule: {cron: "61 * * * *", timezone: Mars/Base}
          fields:
            command: echo
            schedule: "* * *"
          zero:
            command: echo
            schedule: {every: 0}
          word:
            command: echo
            schedule: {every: soon}
          typo:
            command: echo
            schedule: {crn: "* * * * *"}
          both:
            command: echo
            schedule: {cron: "* * * * *", every: 5m}
          interval:
            command: echo
            schedule: {interval: 5m}
          neither:
            command: echo
            schedule: {misfire: skip}
          zone:
            command: echo
            schedule: {every: 5m, timezone: UTC}
        """,
    )
    hint = "is not a duration (use 90s, 5m, 1h30m, 2d, 0.5s or seconds)"
    assert problems(project) == [
        "tasks.d/a.yaml:5:22: task 'minute': invalid cron expression '61 * * * *': Bad minute",
        "tasks.d/a.yaml:5:46: task 'minute': unknown timezone 'Mars/Base'"
        " (use an IANA name such as Europe/Oslo)",
        "tasks.d/a.yaml:8:15: task 'fields': cron expression '* * *' must have 5 fields"
        " (minute hour day month weekday)",
        "tasks.d/a.yaml:11:23: task 'zero': schedule.every: must be more than 0",
        f"tasks.d/a.yaml:14:23: task 'word': schedule.every: 'soon' {hint}",
        "tasks.d/a.yaml:17:16: task 'typo': schedule: unknown key 'crn' (did you mean 'cron'?)",
        "tasks.d/a.yaml:20:35: task 'both': schedule: give 'cron' or 'every', not both",
        "tasks.d/a.yaml:23:16: task 'interval': schedule: unknown key 'interval'"
        " (known keys: cron, timezone, every, misfire, overlap)",
        "tasks.d/a.yaml:26:15: task 'neither': schedule: needs 'cron' (a cron expression) or 'every' (a DURATION)",
        "tasks.d/a.yaml:29:27: task 'zone': schedule: 'timezone' goes with 'cron' ('every' needs none)",
    ]


# -- which files, in which order ---------------------------------------------------------------


def test_files_are_read_in_sorted_path_order_at_any_depth(project: ProjectDir) -> None:
    for rel in ["b.yaml", "a/z.yml", "a/b/c.yaml", "a.yaml", "c.yml", "notes.txt", "x.json",
                ".hidden.yaml", ".git/config.yaml", "d/.swp/e.yaml"]:
        project.tasks(rel, "version: 1\ntasks: {}\n")
    found = [p.relative_to(project.root / "tasks.d").as_posix() for p in list_task_files(project.root)]
    assert found == ["a.yaml", "a/b/c.yaml", "a/z.yml", "b.yaml", "c.yml"]


def test_the_first_file_in_path_order_owns_a_duplicate_name(project: ProjectDir) -> None:
    project.tasks("z.yaml", "version: 1\ntasks:\n  a:\n    command: echo z\n")
    project.tasks("m/deep/a.yml", "version: 1\ntasks:\n  a:\n    command: echo m\n")
    assert problems(project) == [
        "tasks.d/m/deep/a.yml:3:3: task 'a' is also declared at tasks.d/z.yaml:3",
        "tasks.d/z.yaml:3:3: task 'a' is already declared at tasks.d/m/deep/a.yml:3",
    ]


def test_yaml_and_yml_files_both_declare_tasks(project: ProjectDir) -> None:
    project.tasks("one.yaml", "version: 1\ntasks:\n  one:\n    command: echo\n")
    project.tasks("sub/two.yml", "version: 1\ntasks:\n  two:\n    command: echo\n")
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert {n: str(s.source) for n, s in declared.specs.items()} == {
        "one": "tasks.d/one.yaml:3",
        "two": "tasks.d/sub/two.yml:3",
    }


def test_directory_symlink_loop_ends_the_walk(project: ProjectDir) -> None:
    project.tasks("sub/a.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n")
    os.symlink("..", project.root / "tasks.d" / "sub" / "loop")
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert list(declared.specs) == ["a"]


# -- files that are not what they should be ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "1:1: empty file; a task file holds 'version: 1' and 'tasks:'"),
        (b"# just a comment\n", "1:1: empty file; a task file holds 'version: 1' and 'tasks:'"),
        (b"- a\n- b\n", "1:1: expected a mapping with 'version: 1' and 'tasks:', found a list"),
        (b"hello\n", "1:1: expected a mapping with 'version: 1' and 'tasks:', found a string"),
        (b"version: 1\ntasks:\n", "2:7: tasks: expected a mapping, found null"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "1:1: not UTF-8 text (byte 0x89); task files are UTF-8 YAML"),
        (b"version: 1\ntasks:\n  a:\n    command: e\x00cho\n",
         "4:15: YAML error: unacceptable character #x0000: control characters are not allowed"),
        (b"\xef\xbb\xbfversion: 1\ntasks: {}\n", None),
    ],
)
def test_files_that_are_not_task_mappings(project: ProjectDir, content: bytes, expected: str | None) -> None:
    (project.root / "tasks.d" / "f.yaml").write_bytes(content)
    assert problems(project) == ([f"tasks.d/f.yaml:{expected}"] if expected else [])


def test_self_referencing_symlink_is_reported(project: ProjectDir) -> None:
    os.symlink("a.yaml", project.root / "tasks.d" / "a.yaml")
    [problem] = problems(project)
    assert problem.startswith("tasks.d/a.yaml:1:1: cannot read: ")
    assert "symbolic links" in problem


def test_file_deleted_before_it_is_read_is_skipped(project: ProjectDir) -> None:
    path = project.tasks("gone.yaml", "version: 1\ntasks:\n  a:\n    command: echo\n")
    path.unlink()
    assert read_task_file(project.root, path) is None


def test_file_deleted_between_listing_and_reading(
    project: ProjectDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.tasks("keep.yaml", "version: 1\ntasks:\n  keep:\n    command: echo\n")
    gone = project.tasks("gone.yaml", "version: 1\ntasks:\n  gone:\n    command: echo\n")
    listed = list_task_files(project.root)

    def list_then_delete(root: Path) -> list[Path]:
        gone.unlink()
        return listed

    monkeypatch.setattr(spec_module, "list_task_files", list_then_delete)
    declared = load_tasks(project.root)
    assert declared.problems == []
    assert list(declared.specs) == ["keep"]


def test_alias_bomb_is_refused(project: ProjectDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taskfile_module, "_MAX_NODES", 10_000)
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    lines.append("tasks: {}")
    project.tasks("bomb.yaml", "\n".join(lines) + "\n")
    [problem] = problems(project)
    # at the alias that passed the cap: the 8th *a2 in a3's list, on line 5
    assert problem == (
        "tasks.d/bomb.yaml:5:1: a3.7: more than 10,000 YAML values, counting what each alias stands for; "
        "split the file, or write fewer values or aliases"
    )


def test_file_over_the_size_cap_is_refused_unread(project: ProjectDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "MAX_FILE_BYTES", 100)
    project.tasks("big.yaml", "version: 1\ntasks:\n" + "".join(f"  t{i}:\n    command: echo\n" for i in range(20)))
    [problem] = problems(project)
    assert problem.startswith("tasks.d/big.yaml:1:1: file is ")


def test_a_parse_cache_reuses_unchanged_files_and_rereads_changed_ones(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo a\n")
    b = project.tasks("b.yaml", "version: 1\ntasks:\n  b:\n    command: echo b\n  a:\n    command: echo again\n")
    cache: spec_module.ParseCache = {}
    first = load_tasks(project.root, cache)
    assert [p.message for p in first.problems] == [
        "task 'a' is also declared at tasks.d/b.yaml:5",
        "task 'a' is already declared at tasks.d/a.yaml:3",
    ]
    built = cache["tasks.d/a.yaml"].specs["a"]

    b.write_text("version: 1\ntasks:\n  b:\n    command: echo B\n")
    second = load_tasks(project.root, cache)
    assert second.problems == [], "problems from the last load must not stick to a reused file"
    assert second.specs["a"] is built, "an unchanged file is not parsed again"
    assert second.specs["b"].command == "echo B"

    b.unlink()
    assert set(load_tasks(project.root, cache).specs) == {"a"} and set(cache) == {"tasks.d/a.yaml"}


# -- positions of files kept in the parse cache --------------------------------------------------


def shed(cache: spec_module.ParseCache, rel: str) -> bool:
    """Whether the cache holds ``tasks.d/rel`` without its position tables."""
    file = cache[f"tasks.d/{rel}"].file
    return not file.keys and not file.values


def test_a_cached_file_places_a_task_declared_again_in_another_file(project: ProjectDir) -> None:
    project.tasks("a.yaml", "version: 1\n# tasks\ntasks:\n  x:\n    command: echo\n  a:\n    command: echo 1\n")
    cache: spec_module.ParseCache = {}
    assert load_tasks(project.root, cache).problems == []
    assert shed(cache, "a.yaml"), "a file without problems keeps no positions"

    project.tasks("b.yml", "version: 1\ntasks:\n  a: {command: echo 2}\n")
    expected = [
        "tasks.d/a.yaml:6:3: task 'a' is also declared at tasks.d/b.yml:3",
        "tasks.d/b.yml:3:3: task 'a' is already declared at tasks.d/a.yaml:6",
    ]
    assert [str(p) for p in load_tasks(project.root).problems] == expected
    assert [str(p) for p in load_tasks(project.root, cache).problems] == expected
    assert [str(p) for p in load_tasks(project.root, cache).problems] == expected


def test_a_cached_file_places_unknown_needs_and_cycles(project: ProjectDir) -> None:
    project.tasks(
        "a.yaml",
        """
        version: 1
        tasks:
          a:
            command: echo
            needs:
              - c
              - b
          c: {command: echo}
        """,
    )
    b = project.tasks("b.yaml", "version: 1\ntasks:\n  b:\n    command: echo\n")
    cache: spec_module.ParseCache = {}
    assert load_tasks(project.root, cache).problems == []
    assert shed(cache, "a.yaml")

    b.write_text("version: 1\ntasks:\n  bb:\n    command: echo\n")
    expected = ["tasks.d/a.yaml:7:9: task 'a' needs 'b', which is not declared (did you mean 'bb'?)"]
    assert [str(p) for p in load_tasks(project.root).problems] == expected
    assert [str(p) for p in load_tasks(project.root, cache).problems] == expected

    b.write_text("version: 1\ntasks:\n  b:\n    command: echo\n    needs: [a]\n")
    expected = ["tasks.d/a.yaml:5:5: cycle in needs: a -> b -> a"]
    assert [str(p) for p in load_tasks(project.root).problems] == expected
    assert [str(p) for p in load_tasks(project.root, cache).problems] == expected


def test_a_cached_file_places_problems_with_python_callables(
    project: ProjectDir, fresh_plugins: None
) -> None:
    from runner.project import load_project

    project.plugin("jobs", "def run(a: int, b: str) -> str:\n    return b * a\n")
    project.tasks(
        "jobs.yaml",
        """
        version: 1
        tasks:
          missing:
            type: python
            callable: plugins.jobs:nope
          short:
            type: python
            callable: plugins.jobs:run
            parameters: {a: 1}
          wrong:
            type: python
            callable: plugins.jobs:run
            parameters: {a: one, b: x}
        """,
    )
    cache: spec_module.ParseCache = {}
    assert load_tasks(project.root, cache).problems == []
    assert shed(cache, "jobs.yaml")

    cached = [str(p) for p in load_project(project.root, load_tasks(project.root, cache)).strict_problems()]
    assert cached == [str(p) for p in load_project(project.root).strict_problems()]
    assert cached == [
        "tasks.d/jobs.yaml:5:15: task 'missing': callable 'plugins.jobs:nope': "
        "module plugins.jobs has no attribute 'nope'",
        "tasks.d/jobs.yaml:9:5: task 'short': missing parameter 'b' (str)",
        "tasks.d/jobs.yaml:13:21: task 'wrong': parameter 'a': expected int, got str 'one'",
    ]


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_a_cached_file_changed_since_it_was_read_places_problems_at_the_task(
    project: ProjectDir, change: str
) -> None:
    a = project.tasks("a.yaml", "version: 1\ntasks:\n  x: {command: echo}\n  a:\n    command: echo\n    needs: [x]\n")
    cache: spec_module.ParseCache = {}
    declared = load_tasks(project.root, cache)
    assert shed(cache, "a.yaml")

    if change == "rewritten":
        a.write_text("# moved\n\nversion: 1\ntasks:\n  x: {command: echo}\n  a:\n    command: echo\n    needs: [x]\n")
    else:
        a.unlink()
    # The positions of other bytes would be wrong; the task's own line, as read, still holds.
    assert str(declared.at("a", "needs", 0, message="m")) == "tasks.d/a.yaml:4:3: m"
    assert str(declared.at("a", "needs", message="m", key=True)) == "tasks.d/a.yaml:4:3: m"
    assert str(declared.owner["a"].at((), "m")) == "tasks.d/a.yaml:1:1: m"

    if change == "rewritten":
        a.write_text("# moved\n\nversion: 1\ntasks:\n  a:\n    command: echo\n    needs: [x]\n")
        assert [str(p) for p in load_tasks(project.root, cache).problems] == [
            "tasks.d/a.yaml:7:13: task 'a' needs 'x', which is not declared"
        ]


def test_a_cached_file_keeps_positions_read_again_only_while_problems_need_them(
    project: ProjectDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    parse = taskfile_module._parse

    def counting(file: taskfile_module.TaskFile, raw: bytes) -> None:
        parsed.append(file.path)
        parse(file, raw)

    monkeypatch.setattr(taskfile_module, "_parse", counting)
    project.tasks("a.yaml", "version: 1\ntasks:\n  a:\n    command: echo 1\n")
    b = project.tasks("b.yaml", "version: 1\ntasks:\n  b:\n    command: echo\n  a:\n    command: echo 2\n")
    cache: spec_module.ParseCache = {}
    expected = [
        "tasks.d/a.yaml:3:3: task 'a' is also declared at tasks.d/b.yaml:5",
        "tasks.d/b.yaml:5:3: task 'a' is already declared at tasks.d/a.yaml:3",
    ]
    assert [str(p) for p in load_tasks(project.root, cache).problems] == expected
    assert parsed == ["tasks.d/a.yaml", "tasks.d/b.yaml", "tasks.d/b.yaml", "tasks.d/a.yaml"]

    parsed.clear()
    assert [str(p) for p in load_tasks(project.root, cache).problems] == expected
    assert parsed == [], "positions read again for a problem that is still there are kept"

    b.write_text("version: 1\ntasks:\n  b:\n    command: echo\n")
    assert load_tasks(project.root, cache).problems == []
    assert parsed == ["tasks.d/b.yaml"]
    assert shed(cache, "b.yaml") and not shed(cache, "a.yaml")
    assert load_tasks(project.root, cache).problems == []
    assert shed(cache, "a.yaml"), "a load that needed no position of a file sheds them again"
