"""tiffpipe on AWS: the names of a stack's resources, and the boto3 clients to reach them.

``deploy.py`` creates a stack (``deploy_steps``, over the per-resource steps of
``resources``, with IAM documents from ``policies`` and images from ``images``);
``tiffpipe start``/``status`` run it (``executions``). Every name is derived from the stack
name, the account and the region, so any of them can find the others without a state
file; but IAM is global, so the roles' names derive from the stack name alone, and the
roles record the region they belong to (:data:`REGION_TAG`, ``roles``). Clients are
created on first use and passed in, never made at import time.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.core.constants import FUNCTIONS
from pipeline.errors import TiffpipeError

#: the three functions (and images), in the order the state machine uses them
STEPS = FUNCTIONS
#: tag on every resource a stack creates
STACK_TAG = "tiffpipe:stack"
#: tag on a stack's IAM roles: the region of the stack they belong to (IAM is global, their
#: names carry no region: see :mod:`pipeline.aws.roles`)
REGION_TAG = "tiffpipe:region"
#: tag on a stack's state machine: the stack's bucket (manifests, work, reports)
BUCKET_TAG = "tiffpipe:bucket"
_STACK = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$")
#: EventBridge Scheduler's recurring expressions: rate(N unit) (singular for 1), cron(6 fields)
_RATE = re.compile(r"^rate\((\d+) (minute|hour|day)(s?)\)$")
_CRON = re.compile(r"^cron\((\S+ ){5}\S+\)$")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
#: a cron expression's fields as EventBridge Scheduler documents them (schedule-types.html):
#: name, lowest, highest, the names that stand for values (1 for the first), and what the
#: field takes besides "," "-" "*" "/" (day-of-month: ? L W; day-of-week: ? L #)
_CRON_FIELDS = (("minutes", 0, 59, (), ""), ("hours", 0, 23, (), ""),
                ("day-of-month", 1, 31, (), "?LW"), ("month", 1, 12, _MONTHS, ""),
                ("day-of-week", 1, 7, _DAYS, "?L#"), ("year", 1970, 2199, (), ""))
_EXAMPLES = ("e.g. \"cron(0 2 * * ? *)\" for 02:00 UTC every day, \"cron(0 2 ? * MON *)\" "
             "on Mondays")


class AwsError(TiffpipeError):
    """A deploy, start or status step cannot go on; the message says what to do."""


class NoCredentialsFoundError(AwsError):
    """No AWS credentials were found in the environment, profile or instance role."""


class DeployUsageError(AwsError):
    """Options that, with what the stack has deployed, would break it (a usage error:
    exit 2, nothing changed); the message says which options to give."""


class StackNotFoundError(AwsError):
    """The stack (its state machine or bucket) does not exist: deploy it first."""


def check_stack_name(stack: str) -> str:
    """``stack`` if it can name every resource (bucket names are the tightest), else an error."""
    if not _STACK.match(stack):
        raise AwsError(f"--stack {stack!r}: expected 1 to 20 lower-case letters, digits and "
                       "hyphens, starting and ending with a letter or digit (it becomes part "
                       "of an S3 bucket name)")
    return stack


def check_endpoint_url(url: str | None) -> str | None:
    """``--endpoint-url``, if it is a URL boto3 can send calls to (else an AwsError saying
    what is expected, before any call: boto3's own is a ValueError at its first client)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AwsError(f"--endpoint-url {url!r}: expected an http:// or https:// URL, e.g. "
                       "http://localhost:4566")
    return url


def check_region(region: str, endpoint_url: str | None = None) -> str | None:
    """Whether ``region`` names an AWS region, before any call (a mistyped one, ``eu-west-1a``,
    failed at the first call: "Could not connect to the endpoint URL"): AwsError when it is
    none of botocore's partitions' region names nor patterns, with the closest known ones;
    a warning (returned) when botocore does not list it but it has a region's form (a region
    newer than botocore, or a typo: the closest are said); None when known. With an
    ``endpoint_url`` (an emulator), any name."""
    if endpoint_url:
        return None
    from botocore.session import get_session

    partitions = get_session().get_data("endpoints")["partitions"]
    known = sorted({r for p in partitions for r in p["regions"]})
    if region in known:
        return None
    close = difflib.get_close_matches(region, known, n=3, cutoff=0.6)
    meant = f" (did you mean {' or '.join(close)}?)" if close else ""
    if any(re.fullmatch(p["regionRegex"], region) for p in partitions):
        return (f"region {region!r} is not one this botocore knows{meant}: going on, as it "
                "may be newer than botocore (if it is, upgrade boto3 to have it known)")
    raise AwsError(f"region {region!r} is not an AWS region{meant}: give --region a region "
                   "name, e.g. eu-west-1 (aws ec2 describe-regions lists yours; an "
                   "availability zone, eu-west-1a, is not one); nothing was changed")


def check_schedule(schedule: str | None, manifest: str | None) -> None:
    """The schedule options, before anything is asked of AWS: both or neither, and an
    expression EventBridge Scheduler takes (AwsError saying what is expected)."""
    if manifest and not schedule:
        raise AwsError('--schedule-manifest needs --schedule "cron(...)" or "rate(...)"')
    if schedule and not manifest:
        raise AwsError("--schedule needs --schedule-manifest: the manifest every run uses "
                       "(s3://... that exists, or a local file to upload)")
    if schedule is None:
        return
    rate = _RATE.match(schedule)
    if rate and int(rate.group(1)) > 0 and (rate.group(3) == "s") == (rate.group(1) != "1"):
        return
    if _CRON.match(schedule):
        problem = _cron_problem(schedule[5:-1].split(" "))
        if problem:
            raise AwsError(f"--schedule {schedule!r}: {problem}; {_EXAMPLES}")
        return
    raise AwsError(f"--schedule {schedule!r}: expected \"rate(N minutes|hours|days)\" (\"rate(1 "
                   "day)\" for one) or \"cron(minutes hours day-of-month month day-of-week "
                   f"year)\", {_EXAMPLES}")


def _cron_problem(fields: list[str]) -> str | None:
    """What EventBridge Scheduler would refuse of a cron expression's six fields (None:
    nothing): a value out of its field's range, a wildcard the field does not take, or
    day-of-month and day-of-week not one of them ``?`` (AWS would refuse it only at the
    deploy's last step, the functions and state machine already updated)."""
    for text, (name, lo, hi, names, extra) in zip(fields, _CRON_FIELDS, strict=True):
        if text == "?" and "?" in extra:
            continue
        for element in text.split(","):
            if not _cron_element(element, lo, hi, names, extra):
                takes = f"{lo}-{hi}" + (f" or {names[0]}-{names[-1]}" if names else "")
                wild = ", - * /" + "".join(f" {c}" for c in extra)
                return f"{name} {element!r}: expected {takes} (wildcards {wild})"
    dom, dow = fields[2], fields[4]
    if (dom == "?") == (dow == "?"):
        return (f"day-of-month {dom!r} and day-of-week {dow!r}: expected exactly one of them "
                "to be \"?\" (EventBridge Scheduler takes a day of the month or of the week, "
                "not both): \"?\" in day-of-week for days of the month, in day-of-month for "
                "days of the week")
    return None


def _cron_element(element: str, lo: int, hi: int, names: tuple[str, ...], extra: str) -> bool:
    """Whether one comma-separated element of a cron field is one EventBridge takes: ``*``,
    a value or a range, either with ``/step``; day-of-month's ``L``, ``LW`` and ``15W``;
    day-of-week's ``L``, ``5L`` and ``3#2`` (its 2nd Tuesday)."""

    def value(v: str) -> bool:
        if v.upper() in names:
            return True
        return v.isdigit() and lo <= int(v) <= hi

    if "L" in extra and element in (("L", "LW") if "W" in extra else ("L",)):
        return True
    if "W" in extra and element.endswith("W"):
        return value(element[:-1])
    if "#" in extra:
        if element.endswith("L"):
            return value(element[:-1])
        if "#" in element:
            day, _, nth = element.partition("#")
            return value(day) and nth in ("1", "2", "3", "4", "5")
    base, slash, step = element.partition("/")
    if slash and not (step.isdigit() and int(step) >= 1):
        return False
    if base == "*":
        return True
    first, dash, last = base.partition("-")
    return value(first) and (not dash or value(last))


@dataclass(frozen=True)
class StackNames:
    """Every name and ARN of a stack, derived from (stack, account, region); the roles'
    names from the stack alone (IAM is global)."""

    stack: str
    account: str
    region: str
    partition: str = "aws"

    @property
    def prefix(self) -> str:
        return f"tiffpipe-{self.stack}"

    @property
    def bucket(self) -> str:
        return f"{self.prefix}-{self.account}-{self.region}"

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}"

    def repository(self, step: str) -> str:
        return f"{self.prefix}-{step}"

    def function(self, step: str) -> str:
        return f"{self.prefix}-{step}"

    def function_arn(self, step: str) -> str:
        return (f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:"
                f"{self.function(step)}")

    def function_role(self, step: str) -> str:
        return f"{self.prefix}-{step}-fn"

    @property
    def state_machine_role(self) -> str:
        return f"{self.prefix}-states"

    @property
    def scheduler_role(self) -> str:
        return f"{self.prefix}-scheduler"

    @property
    def roles(self) -> list[str]:
        """Every role a stack may have: its functions', its state machine's, its
        schedule's."""
        return [*(self.function_role(s) for s in STEPS), self.state_machine_role,
                self.scheduler_role]

    def role_arn(self, role: str) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{role}"

    @property
    def state_machine(self) -> str:
        return self.prefix

    @property
    def state_machine_arn(self) -> str:
        return (f"arn:{self.partition}:states:{self.region}:{self.account}:stateMachine:"
                f"{self.state_machine}")

    @property
    def executions_arn(self) -> str:
        """Every execution of the state machine (Distributed Map children included)."""
        return (f"arn:{self.partition}:states:{self.region}:{self.account}:execution:"
                f"{self.state_machine}:*")

    @property
    def map_runs_arn(self) -> str:
        return (f"arn:{self.partition}:states:{self.region}:{self.account}:mapRun:"
                f"{self.state_machine}/*")

    @property
    def state_machine_log_group(self) -> str:
        return f"/aws/vendedlogs/states/{self.prefix}"

    def function_log_group(self, step: str) -> str:
        return f"/aws/lambda/{self.function(step)}"

    def log_group_arn(self, group: str) -> str:
        return f"arn:{self.partition}:logs:{self.region}:{self.account}:log-group:{group}:*"

    @property
    def log_groups(self) -> list[str]:
        return [self.state_machine_log_group, *(self.function_log_group(s) for s in STEPS)]

    @property
    def schedule(self) -> str:
        return self.prefix

    def registry(self) -> str:
        """The account's ECR registry host."""
        suffix = ".com.cn" if self.partition == "aws-cn" else ".com"
        return f"{self.account}.dkr.ecr.{self.region}.amazonaws{suffix}"


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def parse_arn(arn: str) -> dict[str, str]:
    """``arn:partition:service:region:account:resource`` as a dict (ValueError if not an ARN)."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise ValueError(f"{arn!r} is not an ARN (arn:partition:service:region:account:...)")
    return dict(zip(("arn", "partition", "service", "region", "account", "resource"), parts,
                    strict=True))


def env_region() -> str | None:
    """``AWS_REGION``, which the AWS CLI v2 and the SDKs read before ``AWS_DEFAULT_REGION``
    (boto3 reads only the latter: with AWS_REGION alone, a session has no region)."""
    return os.environ.get("AWS_REGION") or None


class Clients:
    """boto3 clients of one session, each created on first use.

    ``endpoint_url`` sends every call there (emulators, tests); ``session`` lets a caller
    (a test) pass a session with event hooks registered; ``region_given``: whether
    ``region`` is the user's --region (not an ARN's: :meth:`options` repeats only theirs).
    """

    def __init__(self, region: str | None = None, profile: str | None = None,
                 endpoint_url: str | None = None, session: Any = None,
                 region_given: bool = True):
        self._session = session
        self._region = region
        self._region_given = region_given
        self._profile = profile
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}

    @property
    def session(self) -> Any:
        if self._session is None:
            import boto3
            from botocore.exceptions import ProfileNotFound

            try:
                self._session = boto3.Session(profile_name=self._profile,
                                              region_name=self._region or env_region())
            except ProfileNotFound as exc:
                raise NoCredentialsFoundError(f"{exc}: check --profile or AWS_PROFILE against "
                                              "~/.aws/config") from exc
        return self._session

    @property
    def region(self) -> str:
        region = self._region or env_region() or self.session.region_name
        if not region:  # (deploy.py: a usage error)
            raise AwsError("no AWS region: pass --region, or set AWS_REGION (or "
                           "AWS_DEFAULT_REGION, or a region in your profile)")
        return str(region)

    def options(self, region: str | None = None) -> list[str]:
        """The options this session was given that locate a stack, to repeat in a command
        it advises (``--region``: ``region``, else the one given; ``--profile``;
        ``--endpoint-url``): the advice works in the same shell, against the same AWS."""
        region = region or (self._region if self._region_given else None)
        return [word for option, value in (("--region", region), ("--profile", self._profile),
                                           ("--endpoint-url", self.endpoint_url))
                if value for word in (option, value)]

    def __call__(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 8})
            self._clients[service] = self.session.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url, config=config)
        return self._clients[service]

    def account(self) -> str:
        """The caller's account id (NoCredentialsFoundError when there are no credentials)."""
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        try:
            return str(self("sts").get_caller_identity()["Account"])
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise NoCredentialsFoundError(
                f"no AWS credentials found ({exc}): configure them (aws configure, "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile) and "
                "run again; nothing was changed") from exc

    def names(self, stack: str) -> StackNames:
        region = self.region
        return StackNames(check_stack_name(stack), self.account(), region, partition_of(region))
