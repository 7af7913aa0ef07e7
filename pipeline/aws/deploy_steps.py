"""The steps of ``deploy.py``: :func:`deploy` makes or updates every resource of a stack (in
``pipeline.aws.resources``), :func:`destroy` removes them.

Every change goes through :class:`Actions`, which logs it and, in a dry run, only logs it.
Order matters for a deploy that stops half-way (no credentials, a failed push): nothing
refers to a resource made later, so a rerun picks up where it stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from pipeline.aws import (
    STEPS,
    AwsError,
    Clients,
    DeployUsageError,
    StackNames,
    check_schedule,
    policies,
)
from pipeline.aws import images as docker_images
from pipeline.aws.actions import Actions, call_failed, error_code, get_or_none
from pipeline.aws.executions import Reach, read_manifest, upload_manifest
from pipeline.aws.lock import DeployLock, break_lock, deploy_lock
from pipeline.aws.resources import (
    Found,
    delete_role,
    delete_schedule,
    empty_bucket,
    ensure_bucket,
    ensure_function,
    ensure_log_group,
    ensure_repository,
    ensure_role,
    ensure_schedule,
    ensure_state_machine,
    latest_digest,
    not_the_stacks,
    refuse_not_the_stacks,
    remove_if,
    role_policy,
)
from pipeline.aws.roles import (
    LOCATIONS_KEY,
    Locations,
    forget_locations,
    record_locations,
    recorded_locations,
    refuse_no_stack,
    refuse_other_region,
)
from pipeline.aws.versions import (
    PREVIOUS_KEY,
    Named,
    Running,
    ensure_version,
    keep_previous,
    prune_versions,
    read_previous,
    rollback_definition,
    running_executions,
    same_definition,
    version_arns,
)
from pipeline.core.concurrency import ITEMS_AT_ONCE, JOBS_AT_ONCE, largest
from pipeline.core.constants import SSE_ENV, SSE_KMS_KEY_ENV
from pipeline.core.manifest import as_manifest
from pipeline.engine import definition
from pipeline.errors import ManifestError

__all__ = ["DeployConfig", "deploy", "destroy", "rollback", "unlock"]

@dataclass
class DeployConfig:
    """What ``deploy.py`` was asked to do."""

    stack: str
    arch: str = "arm64"
    data: list[policies.DataLocation] = field(default_factory=list)
    #: read-only locations (originals no output may replace); None: the deployed ones
    inputs: list[policies.DataLocation] | None = None
    #: KMS keys (ARNs) the data locations' objects are encrypted with; None: the deployed ones
    kms_keys: list[str] | None = None
    schedule: str | None = None
    schedule_manifest: str | None = None
    remove_schedule: bool = False
    skip_build: bool = False
    registry: str | None = None
    base_image: str | None = None
    #: ``KEY=VALUE`` (or ``KEY``: from the environment) build arguments of every build
    build_args: list[str] = field(default_factory=list)
    #: the user's own packages for the process image (custom ops): a requirements file, and
    #: wheels or project folders
    requirements: str | None = None
    packages: list[str] = field(default_factory=list)
    #: build the process image without the user's packages, though the deployed one has some
    no_packages: bool = False
    dry_run: bool = False
    #: the most Lambda invocations a run makes at once; None: the deployed stack's, else the
    #: account's unreserved concurrency
    concurrency: int | None = None
    #: the outputs' server-side encryption (AES256, aws:kms, or "none"); None: the deployed one
    sse: str | None = None
    #: with sse aws:kms, the KMS key (ARN) outputs are encrypted with
    sse_kms_key: str | None = None
    #: the command's options, as the deploy lock records them (a build argument's key only)
    command: str = ""

# --- the whole stack -------------------------------------------------------------------------


def _pushed_images(clients: Clients, names: StackNames, config: DeployConfig,
                   log: Callable[[str], None]) -> dict[str, str]:
    """--skip-build: the image built for the stack's architecture that was pushed last to
    each of its ECR repositories."""
    if config.registry:
        raise AwsError("--skip-build finds the images in ECR; with --registry, build them "
                       "(leave out --skip-build)")
    ecr = clients("ecr")
    found = {}
    for step in STEPS:
        name = names.repository(step)
        repo = get_or_none(lambda n=name: ecr.describe_repositories(repositoryNames=[n])[
            "repositories"][0], "RepositoryNotFoundException")
        uri = repo["repositoryUri"] if repo else f"{names.registry()}/{name}"
        found[step] = f"{uri}@{latest_digest(ecr, name, config.arch)}"
        log(f"image {step} (--skip-build: the last {config.arch} one pushed): {found[step]}")
    return found


def _build_images(config: DeployConfig, clients: Clients, repos: dict[str, str], acts: Actions,
                  build: Callable[..., str], run: Any) -> dict[str, str | None]:
    """``repo@sha256:...`` of each step, built and pushed; None for those a dry run would
    build."""
    keys = [arg.partition("=")[0] for arg in config.build_args]  # (a value may hold a token)
    acts.heading("images", f" ({config.arch}{'; build args: ' + ', '.join(keys) if keys else ''})")
    extra = [word for arg in config.build_args for word in ("--build-arg", arg)]
    yours = [*([f"--requirements {config.requirements}"] if config.requirements else []),
             *config.packages]
    if yours:
        acts.log(f"  the process image with your packages: {', '.join(yours)}")
    if acts.dry_run:
        for step in STEPS:
            acts.change(f"build images/{step}/Dockerfile and push it to {repos[step]}", None)
        return dict.fromkeys(STEPS)
    if not config.registry:
        docker_images.ecr_login(clients("ecr"), run)
    built: dict[str, str | None] = {}
    with docker_images.user_context(config.requirements, config.packages) as context:
        for step in STEPS:
            digest = build(step, config.arch, repos[step], base_image=config.base_image,
                           run=run, log=acts.log, extra_build_args=extra, context=context)
            built[step] = f"{repos[step]}@{digest}"
            acts.log(f"  {step}: {built[step]}")
    return built


def _check_schedule(clients: Clients, config: DeployConfig, names: StackNames,
                    data: list[policies.DataLocation],
                    inputs: list[policies.DataLocation]) -> None:
    """Check the schedule options and read the manifest (nothing is changed yet): valid,
    and its locations within what the stack's functions will reach (``data``, ``inputs``)."""
    check_schedule(config.schedule, config.schedule_manifest)
    if not (config.schedule and config.schedule_manifest):
        return
    manifest = config.schedule_manifest
    text, _ = read_manifest(clients("s3"), manifest,
                            Reach(names.stack, names.bucket, [*data, *inputs], data))
    problems = rerun_problems(text)
    if problems:
        raise ManifestError(manifest, problems)


#: how many jobs a schedule manifest problem names, at most
_SHOWN_JOBS = 5


def rerun_problems(text: str) -> list[str]:
    """The problem of a (checked) jobs manifest as a schedule's: each job whose
    ``if_exists`` neither it nor ``defaults`` sets would run again at every scheduled run,
    replacing its output (the default, overwrite). A scan has none (its jobs are only the
    inputs without an output), nor a job that says what a rerun does: skip (each run does
    only the jobs whose output is missing), overwrite or fail on purpose."""
    try:
        listed = json.loads(text.lstrip("\ufeff"))
    except ValueError:
        return []
    data = as_manifest(listed)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        return []
    defaults = data.get("defaults")
    if isinstance(defaults, dict) and "if_exists" in defaults:
        return []
    unset = [f"jobs[{i}]" for i, job in enumerate(data["jobs"])
             if not (isinstance(job, dict) and "if_exists" in job)]
    if not unset:
        return []
    shown = ", ".join(unset[:_SHOWN_JOBS]) + (
        f" and {len(unset) - _SHOWN_JOBS} more" if len(unset) > _SHOWN_JOBS else "")
    # (a bare list of jobs has no room for defaults: the object form, said)
    where = ('"defaults" (the manifest as {"defaults": {"if_exists": "skip"}, "jobs": [...]})'
             if isinstance(listed, list) else '"defaults"')
    return [(f"jobs: every scheduled run would do these jobs again, replacing their outputs: "
             f"{shown} {'leaves' if len(unset) == 1 else 'leave'} \"if_exists\" unset "
             f"(overwrite). Put \"if_exists\": \"skip\" in {where} (each run then does "
             "only the jobs whose output is missing), set \"overwrite\" to redo them at every "
             "run on purpose, or schedule a \"scan\" instead (each run picks up the new inputs)")]


def _check_packages(config: DeployConfig, clients: Clients, names: StackNames,
                    log: Callable[[str], None]) -> dict[str, str]:
    """The tags recording the user's packages that the process image this deploy builds
    will have; DeployUsageError when the deployed process function's tags record packages
    and this deploy names none (a build would drop them: every job with a custom op would
    fail) and --no-packages does not say to drop them."""
    tags = docker_images.package_tags(config.requirements, config.packages)
    function = get_or_none(lambda: clients("lambda").get_function(
        FunctionName=names.function("process")), "ResourceNotFoundException")
    deployed = docker_images.recorded_packages((function or {}).get("Tags"))
    had = docker_images.describe_packages(deployed)
    if not had or deployed == tags:
        return tags
    if tags:
        log(f"your packages changed since the last deploy (it had {had}): the process image "
            "is built with the new ones")
    elif config.no_packages:
        log(f"--no-packages: the process image is built without your packages ({had})")
    else:
        raise DeployUsageError(
            f"the deployed process function has your packages ({had}), and this deploy "
            "would build its image without them: every job with a custom op would then fail "
            "(PlanJob cannot import it). To keep them, give the same --package/--requirements "
            "again (changed ones are fine: the image is rebuilt with them); to drop them, "
            "give --no-packages; or deploy with --skip-build to keep the deployed images; "
            "nothing was changed")
    return tags


def _check_buckets(clients: Clients, names: StackNames, data: list[policies.DataLocation],
                   inputs: list[policies.DataLocation]) -> None:
    """Every bucket of the data locations but the stack's own (which the deploy makes) must
    exist: a policy granting a missing one would let every run's jobs fail on it. One S3
    refuses to show (403: another account's, shared by its bucket policy) is taken as is."""
    s3 = clients("s3")
    for option, locations in (("--data-bucket", data), ("--input-bucket", inputs)):
        for bucket in sorted({d.bucket for d in locations} - {names.bucket}):
            try:
                s3.head_bucket(Bucket=bucket)
            except ClientError as exc:
                code = error_code(exc)
                if code in ("404", "NoSuchBucket"):
                    raise AwsError(f"{option} {bucket}: no such bucket: create it first, or "
                                   "fix the name; nothing was changed") from exc
                if code not in ("403", "AccessDenied"):
                    raise


def _begin(config: DeployConfig, clients: Clients, log: Callable[[str], None] | None,
           what: str) -> tuple[Callable[[str], None], Actions, StackNames]:
    """The log (stderr by default), the Actions of this (dry) run and the stack's names,
    after saying which stack, account and region it is."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    names = clients.names(config.stack)
    log(f"{what} {names.stack}: account {names.account}, region {names.region}"
        + (" (dry run: nothing is changed)" if config.dry_run else ""))
    return log, Actions(config.dry_run, log), names


def _running(clients: Clients, names: StackNames, log: Callable[[str], None]) -> Running:
    """The stack's running executions and the function versions they use (kept: see
    :mod:`pipeline.aws.versions`), said when there are some. Read before anything changes:
    an execution started during the deploy starts on the definition it replaces, which is
    kept too."""
    running = running_executions(clients, names)
    if running.count:
        log(f"{running.count} execution(s) running: each goes on to its end on the function "
            "versions it started with (kept)")
    if running.named.unversioned:
        log(f"  {running.named.unversioned} of them started on a definition deployed before "
            "versioned deploys, which invokes the functions unversioned: their tasks after "
            "this deploy run its code. If it changes the functions' events or work files, "
            "let them end first (or stop them and start them again after)")
    return running


def _say_if_rolled_back(clients: Clients, names: StackNames, log: Callable[[str], None]) -> None:
    """Say so when the state machine runs what a --rollback went back to (the definition
    kept as the previous one names newer versions): this deploy replaces it."""
    current = get_or_none(lambda: clients("stepfunctions").describe_state_machine(
        stateMachineArn=names.state_machine_arn), "StateMachineDoesNotExist")
    previous = current and read_previous(clients("s3"), names)
    if not previous:
        return
    now, newer = Named().add(names, current["definition"]), Named().add(names, previous)
    if any(max(map(int, newer.versions[s]), default=0) > max(map(int, now.versions[s]),
                                                             default=0) for s in STEPS):
        shown = ", ".join(f"{s} {v}" for s, v in now.shown().items())
        log(f"the state machine runs what a --rollback went back to (versions {shown}): "
            "this deploy replaces it with what it is given")


def _concurrency(config: DeployConfig, clients: Clients, names: StackNames,
                 log: Callable[[str], None]) -> int | None:
    """How many Lambda invocations a run may make at once: ``--concurrency``; else what the
    deployed state machine allows (a redeploy keeps it, as it keeps the data locations);
    for a new stack (or one deployed without it), the account's unreserved Lambda
    concurrency, so that a run's maps do not ask for more than the account can run
    (throttled invocations are retried for minutes, then fail their job). None: that could
    not be read; the definition's own limits stay."""
    if config.concurrency is not None:
        return _capped(config.concurrency, "--concurrency", log)
    current = get_or_none(lambda: clients("stepfunctions").describe_state_machine(
        stateMachineArn=names.state_machine_arn), "StateMachineDoesNotExist")
    kept = current and definition.concurrency_setting(current["definition"])
    if kept:  # a stack deployed without one (the account's unreadable) tries it again
        log(f"concurrency kept (no --concurrency): at most {kept} Lambda invocations at once")
        return kept
    try:
        limit = clients("lambda").get_account_settings()["AccountLimit"]
        unreserved = int(limit["UnreservedConcurrentExecutions"])
    except (ClientError, KeyError, TypeError, ValueError) as exc:
        log(f"the account's Lambda concurrency could not be read, so the state machine keeps "
            f"its own limits ({definition.concurrency_of(definition.definition_text())} "
            f"invocations at once; give --concurrency to set it): {call_failed(exc)}")
        return None
    capped = _capped(unreserved, "the account's unreserved concurrency", log)
    if capped == unreserved:  # (else said capped, once: not "at most" the uncapped total)
        log(f"concurrency: at most {unreserved} Lambda invocations at once, the account's "
            "unreserved concurrency (--concurrency sets another)")
    return capped


def _capped(total: int, what: str, log: Callable[[str], None]) -> int:
    """``total``, at most what a run can use (the most a run makes at once, as
    :func:`pipeline.engine.definition.limit_concurrency` caps it), said when it is cut;
    before, it was cut without a word."""
    cap = largest(0)
    if total > cap:
        log(f"{what} {total:,} is more than a run can use: capped at {cap:,} Lambda "
            f"invocations at once, the most a run makes ({JOBS_AT_ONCE} jobs at once x "
            f"{ITEMS_AT_ONCE:,} items of each job's map, the state machine's limits); give "
            f"--concurrency {cap} or less to set it exactly")
    return min(total, cap)


def _locations(config: DeployConfig, clients: Clients, names: StackNames,
               log: Callable[[str], None]) -> Locations:
    """The read-write and the read-only data locations of this deploy, and the KMS keys of
    their objects: those named, else those the deployed stack's functions have (a redeploy
    that does not name them keeps them, as it keeps the schedule), or, their roles gone,
    those the last deploy recorded in the stack bucket; for a new stack, its own bucket, and
    no read-only location or key."""
    if config.data and config.inputs is not None and config.kms_keys is not None:
        return config.data, config.inputs, config.kms_keys
    iam = clients("iam")
    split_policy = role_policy(iam, names.function_role("split"))
    merge_policy = role_policy(iam, names.function_role("merge"))
    where = ""
    if split_policy is not None and merge_policy is not None:
        readable = policies.locations_of(split_policy, "ReadInputs")
        writable = policies.locations_of(merge_policy, "WriteOutputs")
        deployed = (writable, [d for d in readable if d not in writable],
                    policies.kms_keys_of(split_policy))
    else:  # a new stack, or one whose roles are gone (deleted under it)
        deployed = recorded_locations(clients("s3"), names) or ([], [], [])
        where = f"; from s3://{names.bucket}/{LOCATIONS_KEY}, the function roles being gone"
        if deployed == ([], [], []):
            _say_locations_lost(config, clients, names, log)
    data = config.data or deployed[0] or [policies.DataLocation(names.bucket)]
    inputs = config.inputs if config.inputs is not None else deployed[1]
    keys = config.kms_keys if config.kms_keys is not None else deployed[2]
    shown = (lambda ds: ", ".join(map(str, ds)) or "none")
    if not config.data and deployed[0]:
        log(f"data locations kept (no --data-bucket{where}): {shown(data)}")
    if config.inputs is None and inputs:
        log(f"read-only input locations kept (no --input-bucket{where}): {shown(inputs)}")
    if config.kms_keys is None and keys:
        log(f"KMS keys kept (no --kms-key{where}): {', '.join(keys)}")
    return data, inputs, keys


def _say_locations_lost(config: DeployConfig, clients: Clients, names: StackNames,
                        log: Callable[[str], None]) -> None:
    """Warn when a deployed stack (its state machine there) has lost its function roles, and
    with them the data locations their policies held, with no record of them in its bucket
    (deployed before deploys recorded them): the roles this deploy makes grant only what it
    is given."""
    if get_or_none(lambda: clients("stepfunctions").describe_state_machine(
            stateMachineArn=names.state_machine_arn), "StateMachineDoesNotExist") is None:
        return  # a new stack
    missing = [option for option, given in (
        ("--data-bucket", config.data), ("--input-bucket", config.inputs is not None),
        ("--kms-key", config.kms_keys is not None)) if not given]
    log(f"WARNING: the function roles of stack {names.stack} are gone (deleted under it: by "
        "hand, or by a --destroy of the stack name in another region), and with them its "
        "data locations: they could not be read (no record in "
        f"s3://{names.bucket}/{LOCATIONS_KEY} either). This deploy recreates the roles "
        f"granting only what it is given ({' and '.join(missing)} not given: "
        + ("only the stack bucket" if "--data-bucket" in missing else "none of those")
        + f"). Give {', '.join(missing)} again, as the stack had them: until then its runs "
        "(a kept schedule's too) are denied the other buckets")


#: the functions that write outputs (merge; process: a small job's ProcessJob, PlanJob's check)
_WRITERS = ("process", "merge")


def _output_encryption(config: DeployConfig, clients: Clients, names: StackNames,
                       log: Callable[[str], None]) -> dict[str, str]:
    """The environment the output writers get for the outputs' server-side encryption
    (:data:`~pipeline.core.constants.SSE_ENV`): from ``--sse``, else the deployed merge
    function's (kept, as the data locations are); none for a new stack (the buckets'
    default encryption applies)."""
    if config.sse == "none":
        return {}
    if config.sse:
        return {SSE_ENV: config.sse,
                **({SSE_KMS_KEY_ENV: config.sse_kms_key} if config.sse_kms_key else {})}
    function = get_or_none(lambda: clients("lambda").get_function(
        FunctionName=names.function("merge")), "ResourceNotFoundException")
    env = ((function or {}).get("Configuration", {}).get("Environment") or {}).get(
        "Variables") or {}
    kept = {k: v for k, v in env.items() if k in (SSE_ENV, SSE_KMS_KEY_ENV)}
    if kept:
        log(f"output encryption kept (no --sse): {', '.join(kept.values())}")
    return kept


def deploy(config: DeployConfig, clients: Clients, log: Callable[[str], None] | None = None,
           build: Callable[..., str] = docker_images.build_and_push,
           run: Any = subprocess.run, sleep: Callable[[float], None] = time.sleep,
           ) -> dict[str, Any]:
    """Create or update every resource of the stack; what it is made of (names, ARNs) and
    which changes were made (``changes``: empty when the stack was up to date). Under the
    stack's deploy lock (:mod:`pipeline.aws.lock`): taken before the deployed stack is read
    when its bucket is there, else right after the bucket is made."""
    log, acts, names = _begin(config, clients, log, "stack")
    refuse_other_region(clients, names, "deploy")
    refuse_not_the_stacks(clients, names, bool(config.registry))
    with deploy_lock(clients, names, config.command, config.dry_run, log) as lock:
        lock.take(required=False)
        return _deploy(config, clients, log, acts, names, lock, build, run, sleep)


def _deploy(config: DeployConfig, clients: Clients, log: Callable[[str], None], acts: Actions,
            names: StackNames, lock: DeployLock, build: Callable[..., str], run: Any,
            sleep: Callable[[float], None]) -> dict[str, Any]:
    """:func:`deploy`'s steps, the lock taken by the bucket step at the latest."""
    # preflight: whatever can stop the deploy is checked before anything is changed
    data, inputs, kms_keys = _locations(config, clients, names, log)
    encryption = _output_encryption(config, clients, names, log)
    if encryption.get(SSE_KMS_KEY_ENV) and encryption[SSE_KMS_KEY_ENV] not in kms_keys:
        kms_keys = [*kms_keys, encryption[SSE_KMS_KEY_ENV]]  # the writers make data keys
    _check_buckets(clients, names, data, inputs)
    _check_schedule(clients, config, names, data, inputs)
    # the record of the user's packages the built process image has (None: kept as it is)
    packages = None if config.skip_build else _check_packages(config, clients, names, log)
    pushed = _pushed_images(clients, names, config, log) if config.skip_build else None
    if not config.skip_build and build is docker_images.build_and_push:
        docker_images.checkout_root()  # the Dockerfiles: a clone, not an installed wheel
    if not config.skip_build and not config.dry_run:
        docker_images.check_docker(run)
    concurrency = _concurrency(config, clients, names, log)
    running = _running(clients, names, log)
    _say_if_rolled_back(clients, names, log)

    ensure_bucket(clients("s3"), names, acts)
    lock.take()  # (a new stack's: its bucket is there now) before anything else changes
    if config.registry:
        repos = {s: f"{config.registry.rstrip('/')}/{names.repository(s)}" for s in STEPS}
    else:
        repos = {s: ensure_repository(clients("ecr"), names, s, acts) for s in STEPS}
    images: dict[str, str | None] = dict(pushed) if pushed else _build_images(
        config, clients, repos, acts, build, run)
    logs, iam = clients("logs"), clients("iam")
    groups = {g: ensure_log_group(logs, names, g, acts) for g in names.log_groups}
    roles = {s: ensure_role(iam, names, names.function_role(s), policies.trust_policy("lambda"),
                            policies.function_policy(s, names, data, inputs, kms_keys), acts,
                            f"tiffpipe {names.stack}: the {s} function")
             for s in STEPS}
    roles["states"] = ensure_role(
        iam, names, names.state_machine_role, policies.trust_policy("states", names.account),
        policies.state_machine_policy(names), acts, f"tiffpipe {names.stack}: the state machine")
    record_locations(clients("s3"), names, (data, inputs, kms_keys), acts)
    lam, functions, versions = clients("lambda"), {}, {}
    for s in STEPS:
        functions[s], updated = ensure_function(lam, names, s, images[s], roles[s], config.arch,
                                                acts, sleep, packages if s == "process" else None,
                                                encryption if s in _WRITERS else None)
        # the state machine names this version: running executions keep the ones they have
        versions[s] = ensure_version(lam, names, s, acts, updated)
    text = definition.render(version_arns(names, versions))
    if concurrency is not None:
        text = definition.limit_concurrency(text, concurrency)
    sfn, s3 = clients("stepfunctions"), clients("s3")
    deployed = get_or_none(lambda: sfn.describe_state_machine(
        stateMachineArn=names.state_machine_arn), "StateMachineDoesNotExist")
    replaced = deployed and not same_definition(deployed["definition"], text) and \
        deployed["definition"]
    acts.heading(f"state machine {names.state_machine}")  # (its step begins: said first)
    if replaced:  # kept before it is replaced: what --rollback goes back to
        keep_previous(s3, names, replaced, acts)
    machine = ensure_state_machine(sfn, names, text, roles["states"],
                                   groups[names.state_machine_log_group], acts, sleep)
    schedule = _schedule(config, clients, names, roles, acts)
    # versions no execution can invoke any more: not the new definition's, nor the one it
    # replaced (an execution started in the seconds after the update may still take it)
    kept = Named().add(names, text).add(names, replaced or read_previous(s3, names))
    prune_versions(lam, names, kept, running, acts)

    if config.dry_run:
        log(f"dry run: {len(acts.changes)} change(s) would be made; nothing was changed")
    elif acts.changes:
        log(f"done: {len(acts.changes)} change(s) made")
    else:
        log("nothing changed: the stack is up to date")
    return {"stack": names.stack, "account": names.account, "region": names.region,
            "bucket": names.bucket, "state_machine": machine, "functions": functions,
            "versions": versions,
            "images": images, "repositories": repos, "roles": roles,
            "log_groups": list(groups), "schedule": schedule,
            "concurrency": definition.concurrency_of(text), "dry_run": config.dry_run,
            "changes": acts.changes}


def _schedule(config: DeployConfig, clients: Clients, names: StackNames,
              roles: dict[str, str], acts: Actions) -> str | None:
    """Create/update the schedule (--schedule), remove it (--no-schedule), or keep it."""
    scheduler = clients("scheduler")
    if config.schedule and config.schedule_manifest:
        manifest = config.schedule_manifest
        if not manifest.startswith("s3://"):
            s3, local = clients("s3"), manifest
            manifest = f"s3://{names.bucket}/{policies.MANIFESTS}schedule.json"
            acts.heading("schedule manifest")
            current = get_or_none(lambda: s3.get_object(Bucket=names.bucket, Key=manifest.split(
                "/", 3)[3])["Body"].read().decode("utf-8"), "NoSuchKey", "NoSuchBucket", "404")
            with open(local, encoding="utf-8") as fh:
                text = fh.read()
            if text == current:
                acts.same(manifest)
            else:
                acts.change(f"upload {local} to {manifest}", lambda: upload_manifest(
                    s3, local, text, names.bucket, "schedule"))
        roles["scheduler"] = _scheduler_role(clients, names, acts)
        return ensure_schedule(scheduler, names, config.schedule, manifest, roles["scheduler"],
                               acts)
    if config.remove_schedule:
        delete_schedule(clients, names, acts)
        return None
    existing = get_or_none(lambda: scheduler.get_schedule(Name=names.schedule),
                           "ResourceNotFoundException")
    if existing:
        acts.log(f"schedule {names.schedule}: kept as it is ({existing['ScheduleExpression']}; "
                 "--no-schedule removes it)")
        roles["scheduler"] = _scheduler_role(clients, names, acts)  # (made again if lost)
        return str(existing["Arn"])
    return None


def _scheduler_role(clients: Clients, names: StackNames, acts: Actions) -> str:
    """The schedule's role, made or updated: a new schedule's, and a kept one's (its role
    deleted under it, every scheduled start would fail)."""
    return ensure_role(
        clients("iam"), names, names.scheduler_role,
        policies.trust_policy("scheduler", names.account), policies.scheduler_policy(names),
        acts, f"tiffpipe {names.stack}: the schedule")


# --- rollback -------------------------------------------------------------------------------


def rollback(config: DeployConfig, clients: Clients,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Point the state machine back at the definition the last deploy replaced (the previous
    release's function versions), without a build or any other change
    (:func:`~pipeline.aws.versions.rollback_definition`)."""
    log, acts, names = _begin(config, clients, log, "roll back stack")
    refuse_other_region(clients, names, "rollback")
    refuse_not_the_stacks(clients, names, True, "a --rollback")  # (it changes no repository)
    with deploy_lock(clients, names, config.command, config.dry_run, log) as lock:
        lock.take(required=False)  # (no bucket: nothing to go back to, said next)
        result = rollback_definition(clients, names, acts, log)
        log(f"dry run: {len(acts.changes)} change(s) would be made; nothing was changed"
            if config.dry_run else
            "done: new executions (tiffpipe start, the schedule) run the previous release; "
            "running ones go on with theirs. The next deploy deploys what it is given")
    return result


# --- destroy --------------------------------------------------------------------------------


def _refuse_under_runs(clients: Clients, names: StackNames, log: Callable[[str], None]
                       ) -> None:
    """Stop a destroy, before any change, while executions of the stack run: their tasks
    would fail (their functions and versions gone) and leave their outputs' multipart
    uploads open in the data buckets, billed (``tiffpipe status`` ends those of a run that
    ended, by its execution: with the state machine gone it may find it no more)."""
    running = running_executions(clients, names)
    if running.problem:
        log(f"{running.problem}: if runs are going on, their tasks fail and the uploads "
            "they began stay open in the data buckets")
    if not running.arns:
        return
    shown = ", ".join(running.arns[:3]) + (
        f" and {len(running.arns) - 3} more" if len(running.arns) > 3 else "")
    raise AwsError(
        f"--destroy: {len(running.arns)} execution(s) of {names.state_machine} are running "
        f"({shown}): destroying the stack under them fails their tasks and leaves the "
        "uploads of their outputs open in your data buckets (billed until aborted). Wait "
        "for each to end (tiffpipe status ARN --wait), or stop it (aws stepfunctions "
        "stop-execution --execution-arn ARN) and run tiffpipe status ARN, which ends the "
        "uploads it left open; then run --destroy again. Nothing was changed")


def destroy(config: DeployConfig, clients: Clients, delete_bucket: bool = False,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Remove what deploy made, in reverse order (nothing left refers to a removed resource).

    The bucket (manifests, reports, maybe outputs) is kept unless ``delete_bucket``
    (emptying it removes the deploy lock this destroy holds, which then has none to release).
    """
    log, acts, names = _begin(config, clients, log, "destroy stack")
    refuse_no_stack(clients, names, refuse_other_region(clients, names, "destroy"))
    theirs = not_the_stacks(clients, names, bool(config.registry))
    with deploy_lock(clients, names, config.command, config.dry_run, log) as lock:
        if f"bucket {names.bucket}" not in theirs:  # (no lock written in another's bucket)
            lock.take(required=False)  # (no bucket, a stack half made or removed: none)
        return _destroy(config, clients, delete_bucket, log, acts, names, theirs)


def _destroy(config: DeployConfig, clients: Clients, delete_bucket: bool,
             log: Callable[[str], None], acts: Actions, names: StackNames,
             theirs: dict[str, Found]) -> dict[str, Any]:
    """:func:`destroy`'s steps, under the deploy lock; ``theirs``, the resources of the
    stack's names it did not make, are left as they are."""
    _refuse_under_runs(clients, names, log)
    delete_schedule(clients, names, acts, theirs)
    sfn = clients("stepfunctions")
    found = get_or_none(
        lambda: sfn.describe_state_machine(stateMachineArn=names.state_machine_arn),
        "StateMachineDoesNotExist")
    remove_if(acts, f"state machine {names.state_machine}", found is not None,
              lambda: sfn.delete_state_machine(stateMachineArn=names.state_machine_arn),
              theirs, names)
    lam = clients("lambda")
    for step in STEPS:
        name = names.function(step)
        found = get_or_none(lambda n=name: lam.get_function(FunctionName=n),
                            "ResourceNotFoundException")
        remove_if(acts, f"function {name}", found is not None,
                  lambda n=name: lam.delete_function(FunctionName=n), theirs, names)
    logs = clients("logs")
    for group in names.log_groups:
        found = [g for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
                 if g["logGroupName"] == group]
        remove_if(acts, f"log group {group}", bool(found),
                  lambda g=group: logs.delete_log_group(logGroupName=g), theirs, names)
    iam = clients("iam")
    for role in [names.state_machine_role, *(names.function_role(s) for s in STEPS)]:
        delete_role(iam, role, acts, theirs, names)
    if not config.registry:
        ecr = clients("ecr")
        for step in STEPS:
            repo = names.repository(step)
            found = get_or_none(lambda r=repo: ecr.describe_repositories(repositoryNames=[r]),
                                "RepositoryNotFoundException")
            remove_if(acts, f"ECR repository {repo}", found is not None,
                      lambda r=repo: ecr.delete_repository(repositoryName=r, force=True),
                      theirs, names, " and its images")
    s3 = clients("s3")
    exists = get_or_none(lambda: s3.head_bucket(Bucket=names.bucket), "404", "NoSuchBucket",
                         "NotFound") is not None
    ours = f"bucket {names.bucket}" not in theirs
    if delete_bucket or not ours:
        remove_if(acts, f"bucket {names.bucket}", exists,
                  lambda: (empty_bucket(s3, names.bucket), s3.delete_bucket(Bucket=names.bucket)),
                  theirs, names, " and everything in it")
    elif exists:
        if read_previous(s3, names) is not None:  # (it names versions of no function now)
            acts.change(f"delete s3://{names.bucket}/{PREVIOUS_KEY} (the definition "
                        "--rollback would go back to)",
                        lambda: s3.delete_object(Bucket=names.bucket, Key=PREVIOUS_KEY))
        forget_locations(s3, names, acts)  # (a stack deployed again starts from its bucket)
        log(f"  bucket {names.bucket}: kept (manifests, reports); --delete-bucket removes it")
    log(f"dry run: {len(acts.changes)} deletion(s) would be made; nothing was changed"
        if config.dry_run else f"done: {len(acts.changes)} deletion(s)")
    return {"stack": names.stack, "account": names.account, "region": names.region,
            "deleted": acts.changes, "bucket_kept": exists and not (delete_bucket and ours),
            "left": sorted(theirs), "dry_run": config.dry_run}


# --- the deploy lock --------------------------------------------------------------------------


def unlock(config: DeployConfig, clients: Clients,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``--break-lock``: remove the stack's deploy lock, the one read now only
    (:func:`~pipeline.aws.lock.break_lock`), for a deploy known to be dead."""
    log, acts, names = _begin(config, clients, log, "break the deploy lock of stack")
    broken = break_lock(clients("s3"), names, acts)
    if broken is not None:
        log("dry run: nothing was changed" if config.dry_run else
            "done: run the deploy again (it starts over where the dead one stopped: every "
            "step is re-runnable)")
    # (a dry run breaks none: what it would break is "would_break")
    return {"stack": names.stack, "account": names.account, "region": names.region,
            "broken": None if config.dry_run else broken,
            **({"would_break": broken} if config.dry_run else {}), "dry_run": config.dry_run}
