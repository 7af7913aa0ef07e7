"""The functions' published versions, and which of them a stack's executions run.

Step Functions keeps, for an execution, the definition it started with (UpdateStateMachine
changes only the executions started after it, and a Distributed Map's child executions run
their parent's). A definition naming the functions by their unqualified ARNs would still
invoke whatever code the function has *now*: a job planned by one release would be split,
processed and merged by the next, with the events and work files of the first. So a deploy
publishes a version of each function whose code or configuration changed
(:func:`ensure_version`) and renders the definition with the versions' ARNs
(:func:`version_arns`): each execution runs to its end on the code it started with, and the
executions started after the deploy (``tiffpipe start``, the schedule, which target the
state machine) take the new definition.

Versions no execution can use any more are deleted (:func:`prune_versions`): those named by
neither the new definition, the one it replaced (kept for ``deploy.py --rollback``, and for
the executions started in the few seconds Step Functions may still start on it), nor any
running execution's (``ListExecutions``, ``DescribeStateMachineForExecution``). The
definition a deploy replaced is kept in the stack bucket (:data:`PREVIOUS_KEY`), which is
what ``--rollback`` goes back to (:func:`rollback_definition`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from pipeline.aws import STEPS, AwsError, Clients, StackNames
from pipeline.aws.actions import Actions, error_code, get_or_none
from pipeline.engine import definition

#: where the definition a deploy replaced is kept, in the stack bucket
PREVIOUS_KEY = "deploys/previous.asl.json"
#: what a version keeps of the function's configuration, among what deploy sets
_SNAPSHOT = ("CodeSha256", "Role", "MemorySize", "Timeout", "EphemeralStorage",
             "Architectures")
_FUNCTION_NAME = re.compile(r'"FunctionName"\s*:\s*"([^"]+)"')


def _snapshot(config: dict[str, Any]) -> dict[str, Any]:
    """What a published version holds of a function's code and configuration, among what
    deploy sets: the same for $LATEST and its newest version when nothing changed since."""
    return {**{k: config.get(k) for k in _SNAPSHOT},
            "Environment": (config.get("Environment") or {}).get("Variables") or {}}


def published(lam: Any, name: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A function's ``$LATEST`` configuration (None: no such function) and its published
    versions, oldest first."""
    try:
        found = [v for page in lam.get_paginator("list_versions_by_function").paginate(
            FunctionName=name) for v in page["Versions"]]
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None, []
        raise
    latest = next((v for v in found if v["Version"] == "$LATEST"), None)
    numbered = sorted((v for v in found if v["Version"].isdigit()),
                      key=lambda v: int(v["Version"]))
    return latest, numbered


def ensure_version(lam: Any, names: StackNames, step: str, acts: Actions,
                   updated: bool = False) -> str:
    """The number of the function's version that has its current code and configuration:
    its newest one when nothing changed since it was published, else a new one, published
    (and waited for until it can be invoked). ``updated``: a dry run would have changed the
    function (its version is then the one it would publish)."""
    name = names.function(step)
    latest, versions = published(lam, name)
    newest = versions[-1] if versions else None
    if latest is not None and newest is not None and not (updated and acts.dry_run) and \
            _snapshot(newest) == _snapshot(latest):
        acts.same(f"version {newest['Version']} (its code and configuration)")
        return str(newest["Version"])
    following = str(int(newest["Version"]) + 1) if newest else "1"

    def publish() -> str:
        made = lam.publish_version(FunctionName=name, CodeSha256=latest["CodeSha256"],
                                   Description=f"tiffpipe {names.stack}: deploy.py")
        lam.get_waiter("published_version_active").wait(FunctionName=name,
                                                        Qualifier=made["Version"])
        return str(made["Version"])

    made = acts.change(f"publish version {following} of {name} (its code and configuration: "
                       "the state machine names it; running executions keep theirs)",
                       None if latest is None else publish)
    return made or following


def version_arns(names: StackNames, versions: dict[str, str]) -> dict[str, str]:
    """The ARN of each function's version (``...:function:NAME:3``), for the definition."""
    return {s: f"{names.function_arn(s)}:{versions[s]}" for s in STEPS}


@dataclass
class Named:
    """The function versions some definitions invoke (by function: split, process, merge),
    and how many of those definitions invoke a function unversioned (``$LATEST``, or an
    alias: whatever code it has when the task runs)."""

    versions: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in STEPS})
    unversioned: int = 0

    def add(self, names: StackNames, text: str | None) -> Named:
        """The versions the definition ``text`` names of the stack's functions."""
        if not text:
            return self
        bare = False
        for arn in _FUNCTION_NAME.findall(text):
            for step in STEPS:
                base = names.function_arn(step)
                qualifier = arn[len(base) + 1:] if arn.startswith(base + ":") else None
                if qualifier is not None and qualifier.isdigit():
                    self.versions[step].add(qualifier)
                elif arn == base or qualifier is not None:  # $LATEST, or an alias of it
                    bare = True
        self.unversioned += bare
        return self

    def shown(self) -> dict[str, str]:
        """Each function's versions, as text ("3"; "2,3" when several definitions are added)."""
        return {s: ",".join(sorted(self.versions[s], key=int)) for s in STEPS}


@dataclass
class Running:
    """The stack's running executions: how many (their ARNs), the versions their
    definitions name, and why they could not be listed (None: they were)."""

    arns: list[str] = field(default_factory=list)
    named: Named = field(default_factory=Named)
    problem: str | None = None

    @property
    def count(self) -> int:
        return len(self.arns)


def running_executions(clients: Clients, names: StackNames) -> Running:
    """The versions the stack's running executions use: each one's definition
    (``DescribeStateMachineForExecution``: the one it started with; a Distributed Map's
    children run their parent's). A caller that may not list or describe them gets
    ``problem`` (no version is then deleted)."""
    sfn = clients("stepfunctions")
    found = Running()
    try:
        for page in sfn.get_paginator("list_executions").paginate(
                stateMachineArn=names.state_machine_arn, statusFilter="RUNNING"):
            for execution in page["executions"]:
                arn = execution["executionArn"]
                described = get_or_none(lambda a=arn: sfn.describe_state_machine_for_execution(
                    executionArn=a), "ExecutionDoesNotExist")
                if described is not None:  # (one that ended meanwhile has nothing to keep)
                    found.arns.append(arn)
                    found.named.add(names, described.get("definition"))
    except ClientError as exc:
        if error_code(exc) == "StateMachineDoesNotExist":
            return found
        if error_code(exc) not in ("AccessDeniedException", "AccessDenied"):
            raise
        found.problem = (f"the running executions could not be read ({error_code(exc)}: "
                         "deploy.py needs states:ListExecutions and "
                         "states:DescribeStateMachineForExecution, deploy.py "
                         "--print-deployer-policy)")
    return found


def read_previous(s3: Any, names: StackNames) -> str | None:
    """The definition the last deploy (or rollback) replaced, if kept."""
    body = get_or_none(lambda: s3.get_object(Bucket=names.bucket, Key=PREVIOUS_KEY)["Body"],
                       "NoSuchKey", "NoSuchBucket", "404")
    return None if body is None else body.read().decode("utf-8")


def keep_previous(s3: Any, names: StackNames, text: str, acts: Actions) -> None:
    """Keep ``text``, the definition about to be replaced, for ``--rollback`` (and for what
    may still start on it)."""
    if same_definition(read_previous(s3, names), text):
        return
    acts.change(f"keep the definition it replaces in s3://{names.bucket}/{PREVIOUS_KEY} "
                "(deploy.py --rollback goes back to it)",
                lambda: s3.put_object(Bucket=names.bucket, Key=PREVIOUS_KEY,
                                      Body=text.encode("utf-8"),
                                      ContentType="application/json"))


def same_definition(a: str | None, b: str | None) -> bool:
    """Whether two definitions (texts) are the same state machine."""
    return a is not None and b is not None and json.loads(a) == json.loads(b)


def prune_versions(lam: Any, names: StackNames, keep: Named, running: Running,
                   acts: Actions) -> None:
    """Delete each function's versions that ``keep`` (the new definition's and the one it
    replaced) and the running executions (``running``) do not name: no execution can
    invoke them any more. Nothing is deleted when the running executions could not be read,
    nor versions newer than every kept one (another deploy's, under way)."""
    if running.problem:
        acts.log(f"  old versions: kept, as {running.problem}")
        return
    for step in STEPS:
        kept = keep.versions[step] | running.named.versions[step]
        if not kept:
            continue
        name = names.function(step)
        _, versions = published(lam, name)
        newest_kept = max((int(v) for v in kept if v.isdigit()), default=0)
        for version in versions:
            number = version["Version"]
            if number in kept or int(number) > newest_kept:
                continue
            acts.heading(f"Lambda function {name}")
            acts.change(f"delete version {number} of {name} (no definition and no running "
                        "execution names it)",
                        lambda f=name, n=number: lam.delete_function(FunctionName=f,
                                                                     Qualifier=n))


def missing_versions(lam: Any, names: StackNames, named: Named) -> list[str]:
    """The versions ``named`` names that the functions no longer have."""
    gone = []
    for step in STEPS:
        name = names.function(step)
        for version in sorted(named.versions[step], key=int):
            found = get_or_none(lambda f=name, v=version: lam.get_function_configuration(
                FunctionName=f, Qualifier=v), "ResourceNotFoundException")
            if found is None:
                gone.append(f"{name}:{version}")
    return gone


def rollback_definition(clients: Clients, names: StackNames, acts: Actions,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Point the state machine back at the definition the last deploy replaced (its
    function versions, its concurrency: what ran before), without a build; that deploy's
    definition is kept in its place, so a second rollback goes forward again. Executions
    running keep theirs; those started after run on the previous release. AwsError, nothing
    changed, when there is nothing to go back to, or its versions are gone."""
    sfn, s3, lam = clients("stepfunctions"), clients("s3"), clients("lambda")
    current = get_or_none(lambda: sfn.describe_state_machine(
        stateMachineArn=names.state_machine_arn), "StateMachineDoesNotExist")
    if current is None:
        raise AwsError(f"--rollback: no state machine {names.state_machine} in "
                       f"{names.region}: deploy the stack first; nothing was changed")
    previous = read_previous(s3, names)
    if previous is None:
        raise AwsError(f"--rollback: nothing to go back to: s3://{names.bucket}/"
                       f"{PREVIOUS_KEY} keeps the definition a deploy replaces, and no deploy "
                       "has replaced one since versioned deploys (or it was removed); "
                       "deploy the release you want instead; nothing was changed")
    back, ahead = Named().add(names, previous), Named().add(names, current["definition"])
    if back.unversioned or not all(back.versions.values()):
        raise AwsError(f"--rollback: the definition kept in s3://{names.bucket}/"
                       f"{PREVIOUS_KEY} does not name a version of each of the stack's "
                       "functions: deploy the release you want instead; nothing was changed")
    if same_definition(previous, current["definition"]):
        raise AwsError("--rollback: the state machine already runs the definition kept "
                       "as the previous one: nothing to go back to; nothing was changed")
    gone = missing_versions(lam, names, back)
    if gone:
        raise AwsError(f"--rollback: the previous definition names function versions that "
                       f"no longer exist ({', '.join(gone)}): deploy the release you want "
                       "instead; nothing was changed")

    def shown(named: Named) -> str:
        return ", ".join(f"{s} {v}" for s, v in named.shown().items())

    # its concurrency goes back too: said, as the versions are
    moved = definition.concurrency_change(current["definition"], previous)
    log(f"rollback: from versions {shown(ahead)} to {shown(back)}"
        + (f"; {moved}" if moved else ""))
    acts.heading(f"state machine {names.state_machine}")
    acts.change(f"update the definition to the previous one ({shown(back)}"
                + (f"; {moved}" if moved else "") + ")",
                lambda: sfn.update_state_machine(stateMachineArn=names.state_machine_arn,
                                                 definition=previous))
    # after the update: a rollback stopped between the two still went back
    acts.change(f"keep the definition it replaced in s3://{names.bucket}/{PREVIOUS_KEY} "
                "(a second --rollback goes forward to it)",
                lambda: s3.put_object(Bucket=names.bucket, Key=PREVIOUS_KEY,
                                      Body=current["definition"].encode("utf-8"),
                                      ContentType="application/json"))
    return {"stack": names.stack, "account": names.account, "region": names.region,
            "state_machine": names.state_machine_arn,
            "versions": back.shown(), "replaced": ahead.shown(),
            "concurrency": definition.concurrency_of(previous),
            "replaced_concurrency": definition.concurrency_of(current["definition"]),
            "dry_run": acts.dry_run, "changes": acts.changes}
