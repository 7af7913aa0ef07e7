"""What every deploy and destroy step shares: :class:`Actions` (log each change; in a dry run
only log it) and small helpers over boto3 errors and AWS's descriptions of resources."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from pipeline.aws import STACK_TAG, StackNames
from pipeline.errors import one_line, shortened

T = TypeVar("T")

class Actions:
    """Logs every step; performs changes unless it is a dry run; remembers what changed."""

    def __init__(self, dry_run: bool, log: Callable[[str], None]):
        self.dry_run = dry_run
        self.log = log
        self.changes: list[str] = []
        #: the resource the changes logged now are of (its heading: ``IAM role NAME``)
        self.resource: str | None = None

    def heading(self, resource: str, detail: str = "") -> None:
        """Log the heading of the resource the next changes are of (``bucket NAME``, and
        ``detail`` after it), unless they are of it already; each change recorded names it."""
        if resource != self.resource:
            self.resource = resource
            self.log(resource + detail)

    def change(self, what: str, call: Callable[[], T] | None) -> T | None:
        """Log ``what`` (under its resource's heading), recorded naming the resource (JSON's
        ``changes``: ``IAM role NAME: set the permissions``); do it, unless a dry run."""
        named = self.resource is None or self.resource.rsplit(" ", 1)[-1] in what
        self.changes.append(what if named else f"{self.resource}: {what}")
        self.log(f"  {'would ' if self.dry_run else ''}{what}")
        if self.dry_run or call is None:
            return None
        return call()

    def same(self, what: str) -> None:
        self.log(f"  {what}: unchanged")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


#: what begins an HTML page (an endpoint that is no AWS API's: a web server's 404 page)
_HTML = re.compile(r"<\s*(?:!doctype\s+html|html|head|body|title)\b", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
#: AWS's XML error (``<Error><Code>AccessDenied</Code><Message>...``) in a body botocore left
#: unparsed: one that the service's protocol is not (JSON's Logs, Lambda), through a proxy
_XML_CODE = re.compile(r"<Code>\s*([^<]+?)\s*</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>", re.DOTALL)


def call_failed(exc: BaseException) -> str:
    """A failed AWS call (a ClientError) on one line: the call, the HTTP status, the error
    code and AWS's message; an HTML page instead of AWS's error (an endpoint that does not
    serve the API, as a moto server for Lambda's GetAccountSettings: its whole 404 page was
    shown) is said in words, with its title. Another exception (a BotoCoreError: no
    connection, no credentials): its own message."""
    if not isinstance(exc, ClientError):
        return str(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = error_code(exc) or "no error code"
    message = str(exc.response.get("Error", {}).get("Message") or "")
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    xml_code = None if _HTML.search(message) else _XML_CODE.search(message)
    if xml_code:  # (a 403 AccessDenied sent as text/html: moto enforcing IAM, a proxy)
        xml_message = _XML_MESSAGE.search(message)
        code, message = xml_code.group(1), xml_message.group(1) if xml_message else ""
    # an HTML page: said so by its tags, or by its type when botocore found no AWS error in
    # it (the code then is the HTTP status); an AWS error sent as text/html is AWS's
    unparsed = code == str(status) or code == "no error code"
    if _HTML.search(message) or (
            unparsed and "html" in str(headers.get("content-type", "")).lower()):
        title = _TITLE.search(message)
        named = f' titled "{shortened(one_line(title.group(1)), 200)}"' if title else ""
        message = (f"an HTML page{named} instead of an AWS error: the endpoint does not "
                   "serve this API (an emulator without it, or a proxy)")
    else:
        message = shortened(one_line(message))
    return (f"the {exc.operation_name or 'AWS'} call failed (HTTP {status or '?'}, error code "
            f"{code})" + (f": {message}" if message else ""))


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

