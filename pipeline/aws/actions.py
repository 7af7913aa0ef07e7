"""What every deploy and destroy step shares: :class:`Actions` (log each change; in a dry run
only log it) and small helpers over boto3 errors and AWS's descriptions of resources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from pipeline.aws import STACK_TAG, StackNames

T = TypeVar("T")

class Actions:
    """Logs every step; performs changes unless it is a dry run; remembers what changed."""

    def __init__(self, dry_run: bool, log: Callable[[str], None]):
        self.dry_run = dry_run
        self.log = log
        self.changes: list[str] = []

    def change(self, what: str, call: Callable[[], T] | None) -> T | None:
        self.changes.append(what)
        self.log(f"  {'would ' if self.dry_run else ''}{what}")
        if self.dry_run or call is None:
            return None
        return call()

    def same(self, what: str) -> None:
        self.log(f"  {what}: unchanged")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def get_or_none(call: Callable[[], T], *missing: str) -> T | None:
    """``call()``, or None when AWS answers with one of the ``missing`` error codes."""
    try:
        return call()
    except ClientError as exc:
        if error_code(exc) in missing:
            return None
        raise


def covers(current: Any, desired: Any) -> bool:
    """True if ``current`` (as AWS describes it) has every value of ``desired``; keys AWS
    adds on its own (defaults, timestamps) are ignored."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            covers(current.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(current, list) and len(current) == len(desired)
                and all(covers(c, d) for c, d in zip(current, desired, strict=True)))
    return bool(current == desired)


def retry(call: Callable[[], T], transient: Callable[[ClientError], bool],
           sleep: Callable[[float], None], attempts: int = 10, delay: float = 3.0) -> T:
    """``call()``, retried while AWS answers a transient error (a role just created is not
    usable for a few seconds: IAM is eventually consistent)."""
    for attempt in range(attempts):
        try:
            return call()
        except ClientError as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            sleep(delay)
    raise AssertionError("unreachable")


def stack_tags(names: StackNames) -> dict[str, str]:
    return {STACK_TAG: names.stack}

