"""Secrets: read from the environment or a file at run time, masked as ``***`` wherever kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SecretUnavailable
from runner.masking import MASK, Masker, resolve_env
from runner.models import SecretRef

pytestmark = pytest.mark.timeout(5)


def test_masks_every_occurrence_in_text() -> None:
    masker = Masker(["hunter2"])
    assert masker.text("pw=hunter2, again hunter2.") == f"pw={MASK}, again {MASK}."


def test_longer_secret_containing_a_shorter_one_is_masked_whole() -> None:
    masker = Masker(["abc", "abcdef"])
    assert masker.text("x abcdef y abc") == f"x {MASK} y {MASK}"


def test_empty_secret_masks_nothing_and_masker_is_falsy() -> None:
    masker = Masker([""])
    assert not masker
    assert masker.text("anything") == "anything"
    assert Masker(["s"])


def test_masks_inside_json_like_data_keys_included() -> None:
    masker = Masker(["tok"])
    data = {"a": "my tok", "tok": [1, "tok", {"b": None}], "n": 3}
    assert masker.data(data) == {
        "a": f"my {MASK}",
        MASK: [1, MASK, {"b": None}],
        "n": 3,
    }


def test_without_secrets_data_is_returned_as_is() -> None:
    data = {"a": ["b"]}
    assert Masker().data(data) is data


def test_contains_secret_finds_it_in_bytes() -> None:
    masker = Masker(["pässword"])
    assert masker.contains_secret("x pässword y".encode())
    assert not masker.contains_secret(b"password")


def test_resolve_env_reads_plain_values_env_vars_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_TOKEN", "from-env")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("from-file\n")
    env, secrets = resolve_env(
        {
            "PLAIN": "visible",
            "TOKEN": SecretRef(from_env="RUNNER_TEST_TOKEN"),
            "KEY": SecretRef(from_file="secrets/key"),
        },
        tmp_path,
    )
    assert env == {"PLAIN": "visible", "TOKEN": "from-env", "KEY": "from-file"}
    assert sorted(secrets) == ["from-env", "from-file"]  # the plain value is not a secret


def test_missing_env_var_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RUNNER_TEST_ABSENT", raising=False)
    with pytest.raises(
        SecretUnavailable, match="TOKEN: environment variable RUNNER_TEST_ABSENT is not set"
    ):
        resolve_env({"TOKEN": SecretRef(from_env="RUNNER_TEST_ABSENT")}, tmp_path)


def test_missing_secret_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailable, match=r"KEY: cannot read secret file .*nope\.txt"):
        resolve_env({"KEY": SecretRef(from_file="nope.txt")}, tmp_path)


def test_a_secret_cut_in_half_by_the_output_cap_is_masked_too() -> None:
    masker = Masker(["hunter2-secret"])
    assert masker.cut_text("-secret and then hunter2-secret") == "*** and then ***"
    assert masker.cut_text("nothing secret here") == "nothing secret here"
