"""Secrets: ``env`` values read at run time, and masked as ``***`` in all that is kept or logged."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.errors import SecretUnavailable
from runner.inputs import text_problem
from runner.models import SecretRef

MASK = "***"


def resolve_env(
    env: Mapping[str, str | SecretRef], project: Path
) -> tuple[dict[str, str], list[str]]:
    """The task's environment with secret references read, and the secret values themselves."""
    values: dict[str, str] = {}
    secrets: list[str] = []
    for name, value in env.items():
        if not isinstance(value, SecretRef):
            values[name] = value
            continue
        if value.from_env is not None:
            found = os.environ.get(value.from_env)
            if found is None:
                raise SecretUnavailable(
                    f"env {name}: environment variable {value.from_env} is not set; "
                    "set it in the environment runner runs in"
                )
        else:
            path = project / str(value.from_file)
            try:
                found = path.read_text(encoding="utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise SecretUnavailable(f"env {name}: secret file {path} is not UTF-8 text") from None
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
                raise SecretUnavailable(
                    f"env {name}: cannot read secret file {path}: {getattr(exc, 'strerror', None) or exc}"
                ) from exc
            problem = text_problem(found)
            if problem is not None:  # no environment variable can hold it
                raise SecretUnavailable(f"env {name}: secret file {path} {problem}")
        values[name] = found
        secrets.append(found)
    return values, secrets


def readable_secrets(env: Mapping[str, str | SecretRef], project: Path) -> list[str]:
    """The secret values of ``env`` that can be read now, to mask a run before it starts.

    A run's parameters are recorded when it is queued, long before ``resolve_env`` reads its
    secrets; one that is missing is left out here (the run then fails on it when it starts).
    """
    found: list[str] = []
    for name, value in env.items():
        if isinstance(value, SecretRef):
            try:
                found.extend(resolve_env({name: value}, project)[1])
            except SecretUnavailable:
                continue
    return found


class Masker:
    """Replaces every known secret value with ``***`` in text and in JSON-like data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._known = frozenset(self.secrets)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def covers(self, secrets: Iterable[str]) -> bool:
        """Whether every one of ``secrets`` is masked already."""
        return all(not s or s in self._known for s in secrets)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def cut_text(self, text: str) -> str:
        """``text`` masked, for output whose start was cut off at the cap: the tail of a secret
        left at the very start is masked too (at worst a few innocent characters with it)."""
        text = self.text(text)
        for secret in self.secrets:
            for size in range(len(secret) - 1, 0, -1):
                if text.startswith(secret[-size:]):
                    return MASK + text[size:]
        return text

    def data(self, value: Any) -> Any:
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value

    def contains_secret(self, blob: bytes) -> bool:
        return any(s.encode() in blob for s in self.secrets)
