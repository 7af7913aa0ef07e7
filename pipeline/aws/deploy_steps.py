"""The steps of ``deploy.py``: re-runnable ``ensure_*`` (get or create, then update only what
differs) and ``delete_*`` steps over boto3 clients passed in.

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
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from pipeline.aws import STACK_TAG, STEPS, AwsError, Clients, StackNames, policies
from pipeline.aws import images as docker_images
from pipeline.aws.executions import BUCKET_TAG, read_manifest, upload_manifest
from pipeline.engine import definition

T = TypeVar("T")
POLICY_NAME = "tiffpipe"
#: days kept: work files (the lifecycle rule), logs
WORK_DAYS, LOG_DAYS = 7, 30
#: images kept per repository (older ones expire)
KEEP_IMAGES = 10
#: a scheduled start is retried this often, for this long, when Step Functions refuses it
SCHEDULE_RETRY = {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600}
#: EventBridge Scheduler fills these in at each invocation
EXECUTION_ID = "<aws.scheduler.execution-id>"


@dataclass(frozen=True)
class FunctionSize:
    memory: int  # MB (CPU scales with it: ~1 vCPU per 1,769 MB)
    timeout: int  # seconds
    ephemeral: int  # MB of /tmp


#: split holds a band's segment cache; merge builds the whole output TIFF in /tmp
SIZES = {"split": FunctionSize(3008, 900, 4096), "process": FunctionSize(3008, 900, 1024),
         "merge": FunctionSize(3008, 900, 10240)}


@dataclass
class DeployConfig:
    """What ``deploy.py`` was asked to do."""

    stack: str
    arch: str = "arm64"
    data: list[policies.DataLocation] = field(default_factory=list)
    schedule: str | None = None
    schedule_manifest: str | None = None
    remove_schedule: bool = False
    skip_build: bool = False
    registry: str | None = None
    base_image: str | None = None
    dry_run: bool = False


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


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _get(call: Callable[[], T], *missing: str) -> T | None:
    """``call()``, or None when AWS answers with one of the ``missing`` error codes."""
    try:
        return call()
    except ClientError as exc:
        if _code(exc) in missing:
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


def _retry(call: Callable[[], T], transient: Callable[[ClientError], bool],
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


def _tags(names: StackNames) -> dict[str, str]:
    return {STACK_TAG: names.stack}


# --- bucket ------------------------------------------------------------------------------


def bucket_lifecycle() -> dict[str, Any]:
    return {"Rules": [{
        "ID": "tiffpipe-expire-work", "Status": "Enabled", "Filter": {"Prefix": policies.WORK},
        "Expiration": {"Days": WORK_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}


def ensure_bucket(s3: Any, names: StackNames, acts: Actions) -> str:
    """The stack bucket: encrypted (SSE-S3), public access blocked, work files expiring."""
    bucket = names.bucket
    acts.log(f"bucket {bucket}")
    try:
        s3.head_bucket(Bucket=bucket)
        exists = True
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise AwsError(f"bucket {bucket} exists but this account cannot use it "
                           f"({_code(exc)}): choose another --stack") from exc
        exists = False
    if not exists:
        args: dict[str, Any] = {"Bucket": bucket}
        if names.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": names.region}
        acts.change(f"create bucket {bucket}", lambda: (
            s3.create_bucket(**args),
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [
                {"Key": k, "Value": v} for k, v in _tags(names).items()]})))

    encryption = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                             "BucketKeyEnabled": True}]}
    _ensure_setting(acts, exists and _get(lambda: s3.get_bucket_encryption(Bucket=bucket)[
        "ServerSideEncryptionConfiguration"], "ServerSideEncryptionConfigurationNotFoundError"),
        encryption, "default encryption", "turn on default encryption (SSE-S3)",
        lambda: s3.put_bucket_encryption(Bucket=bucket,
                                         ServerSideEncryptionConfiguration=encryption))

    block = {k: True for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                               "RestrictPublicBuckets")}
    _ensure_setting(acts, exists and _get(lambda: s3.get_public_access_block(Bucket=bucket)[
        "PublicAccessBlockConfiguration"], "NoSuchPublicAccessBlockConfiguration"),
        block, "public access block", "block all public access",
        lambda: s3.put_public_access_block(Bucket=bucket,
                                           PublicAccessBlockConfiguration=block))

    lifecycle = bucket_lifecycle()
    _ensure_setting(acts, exists and _get(lambda: {"Rules": s3.get_bucket_lifecycle_configuration(
        Bucket=bucket)["Rules"]}, "NoSuchLifecycleConfiguration"),
        lifecycle, f"lifecycle (work/ expires after {WORK_DAYS} days)",
        f"set the lifecycle: work/ expires after {WORK_DAYS} days",
        lambda: s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                                      LifecycleConfiguration=lifecycle))
    return bucket


def _ensure_setting(acts: Any, current: Any, desired: dict[str, Any], same: str, change: str,
                    put: Any) -> None:
    """One bucket setting: unchanged when the current one covers ``desired``, else ``put``."""
    if covers(current, desired):
        acts.same(same)
    else:
        acts.change(change, put)


# --- images --------------------------------------------------------------------------------


def ecr_lifecycle() -> dict[str, Any]:
    return {"rules": [{"rulePriority": 1,
                       "description": f"keep the {KEEP_IMAGES} most recent images",
                       "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                                     "countNumber": KEEP_IMAGES},
                       "action": {"type": "expire"}}]}


def ensure_repository(ecr: Any, names: StackNames, step: str, acts: Actions) -> str:
    """An ECR repository (scan on push, the 10 most recent images kept); its URI."""
    name = names.repository(step)
    acts.log(f"ECR repository {name}")
    repo = _get(lambda: ecr.describe_repositories(repositoryNames=[name])["repositories"][0],
                "RepositoryNotFoundException")
    uri = repo["repositoryUri"] if repo else f"{names.registry()}/{name}"
    if repo is None:
        made = acts.change(f"create ECR repository {name} (scan on push)",
                           lambda: ecr.create_repository(
                               repositoryName=name,
                               imageScanningConfiguration={"scanOnPush": True},
                               tags=[{"Key": k, "Value": v} for k, v in _tags(names).items()]))
        if made:
            uri = made["repository"]["repositoryUri"]
    elif not repo.get("imageScanningConfiguration", {}).get("scanOnPush"):
        acts.change("turn on scan on push", lambda: ecr.put_image_scanning_configuration(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}))
    else:
        acts.same("scan on push")
    policy = ecr_lifecycle()
    current = repo and _get(lambda: json.loads(ecr.get_lifecycle_policy(repositoryName=name)[
        "lifecyclePolicyText"]), "LifecyclePolicyNotFoundException")
    if covers(current, policy):
        acts.same(f"lifecycle (keep {KEEP_IMAGES} images)")
    else:
        acts.change(f"set the lifecycle: keep the {KEEP_IMAGES} most recent images",
                    lambda: ecr.put_lifecycle_policy(repositoryName=name,
                                                     lifecyclePolicyText=json.dumps(policy)))
    return str(uri)


def latest_digest(ecr: Any, repository: str) -> str:
    """The digest of the image pushed last to an ECR repository (for --skip-build)."""
    found = _get(lambda: [d for page in ecr.get_paginator("describe_images").paginate(
        repositoryName=repository) for d in page["imageDetails"]], "RepositoryNotFoundException")
    if not found:
        raise AwsError(f"--skip-build: no image in the ECR repository {repository}: deploy "
                       "once without --skip-build to build and push the images")
    return str(max(found, key=lambda d: d["imagePushedAt"])["imageDigest"])


# --- IAM, logs -----------------------------------------------------------------------------


def ensure_role(iam: Any, names: StackNames, role: str, trust: dict[str, Any],
                policy: dict[str, Any], acts: Actions, description: str) -> str:
    """A role with exactly this trust policy and one inline policy; its ARN."""
    acts.log(f"IAM role {role}")
    current = _get(lambda: iam.get_role(RoleName=role)["Role"], "NoSuchEntity")
    if current is None:
        acts.change(f"create role {role}", lambda: iam.create_role(
            RoleName=role, AssumeRolePolicyDocument=json.dumps(trust), Description=description,
            Tags=[{"Key": k, "Value": v} for k, v in _tags(names).items()]))
    elif current["AssumeRolePolicyDocument"] != trust:
        acts.change("update the trust policy", lambda: iam.update_assume_role_policy(
            RoleName=role, PolicyDocument=json.dumps(trust)))
    else:
        acts.same("trust policy")
    inline = current and _get(lambda: iam.get_role_policy(
        RoleName=role, PolicyName=POLICY_NAME)["PolicyDocument"], "NoSuchEntity")
    if inline == policy:
        acts.same("permissions")
    else:
        acts.change(f"{'set' if inline is None else 'update'} the permissions",
                    lambda: iam.put_role_policy(RoleName=role, PolicyName=POLICY_NAME,
                                                PolicyDocument=json.dumps(policy)))
    return names.role_arn(role)


def ensure_log_group(logs: Any, names: StackNames, group: str, acts: Actions) -> str:
    """A log group kept LOG_DAYS days (made here, so destroy can remove it)."""
    acts.log(f"log group {group}")
    found = [g for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
             if g["logGroupName"] == group]
    if not found:
        acts.change(f"create log group {group} ({LOG_DAYS} days)", lambda: (
            logs.create_log_group(logGroupName=group, tags=_tags(names)),
            logs.put_retention_policy(logGroupName=group, retentionInDays=LOG_DAYS)))
    elif found[0].get("retentionInDays") != LOG_DAYS:
        acts.change(f"keep logs {LOG_DAYS} days", lambda: logs.put_retention_policy(
            logGroupName=group, retentionInDays=LOG_DAYS))
    else:
        acts.same(f"retention {LOG_DAYS} days")
    return names.log_group_arn(group)


# --- functions, state machine, schedule ------------------------------------------------------


def _role_not_ready(exc: ClientError) -> bool:
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return _code(exc) in ("InvalidParameterValueException", "AccessDeniedException") and (
        "role" in message.lower() or "assume" in message.lower())


def ensure_function(lam: Any, names: StackNames, step: str, image: str | None, role_arn: str,
                    arch: str, acts: Actions, sleep: Callable[[float], None] = time.sleep) -> str:
    """A container-image function at ``image`` (``repo@sha256:...``; None: an image still to
    build in a dry run), sized by SIZES; waits until it is active/updated."""
    name = names.function(step)
    size = SIZES[step]
    acts.log(f"Lambda function {name}")
    settings = {"Role": role_arn, "MemorySize": size.memory, "Timeout": size.timeout,
                "EphemeralStorage": {"Size": size.ephemeral},
                "Environment": {"Variables": {"TIFFPIPE_STACK": names.stack,
                                              "TIFFPIPE_BUCKET": names.bucket}},
                "Description": f"tiffpipe {names.stack}: the {step} step"}
    architectures = [docker_images.LAMBDA_ARCHITECTURES[arch]]
    current = _get(lambda: lam.get_function(FunctionName=name), "ResourceNotFoundException")
    shown = image or f"the {step} image to be built"
    if current is None:
        def create() -> None:
            _retry(lambda: lam.create_function(
                FunctionName=name, PackageType="Image", Code={"ImageUri": image},
                Architectures=architectures, Tags=_tags(names), **settings),
                _role_not_ready, sleep)
            lam.get_waiter("function_active_v2").wait(FunctionName=name)
        acts.change(f"create function {name} from {shown} ({size.memory} MB, "
                    f"{size.timeout} s, /tmp {size.ephemeral} MB)", create)
        return names.function_arn(step)
    config = current["Configuration"]
    if image is None or current.get("Code", {}).get("ImageUri") != image or \
            config.get("Architectures") != architectures:
        def update_code() -> None:
            lam.update_function_code(FunctionName=name, ImageUri=image,
                                     Architectures=architectures)
            lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        acts.change(f"deploy {shown}" + (" (if its digest changed)" if image is None else ""),
                    update_code)
    else:
        acts.same(f"image {image}")
    if covers(config, settings):
        acts.same("configuration")
    else:
        def update_config() -> None:
            _retry(lambda: lam.update_function_configuration(FunctionName=name, **settings),
                   _role_not_ready, sleep)
            lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        acts.change("update the configuration (role, size, environment)", update_config)
    return str(config.get("FunctionArn", names.function_arn(step)))


def ensure_state_machine(sfn: Any, names: StackNames, text: str, role_arn: str,
                         log_group_arn: str, acts: Actions,
                         sleep: Callable[[float], None] = time.sleep) -> str:
    """The state machine from ``text`` (the rendered definition), logging errors."""
    arn = names.state_machine_arn
    acts.log(f"state machine {names.state_machine}")
    logging = {"level": "ERROR", "includeExecutionData": False,
               "destinations": [{"cloudWatchLogsLogGroup": {"logGroupArn": log_group_arn}}]}
    current = _get(lambda: sfn.describe_state_machine(stateMachineArn=arn),
                   "StateMachineDoesNotExist")
    if current is None:
        tags = [{"key": STACK_TAG, "value": names.stack}, {"key": BUCKET_TAG,
                                                            "value": names.bucket}]
        acts.change(f"create state machine {names.state_machine}", lambda: _retry(
            lambda: sfn.create_state_machine(
                name=names.state_machine, definition=text, roleArn=role_arn, type="STANDARD",
                loggingConfiguration=logging, tags=tags), _role_not_ready, sleep))
        return arn
    if current.get("status") == "DELETING":
        raise AwsError(f"state machine {arn} is still being deleted: wait a minute and run "
                       "deploy.py again")
    if (json.loads(current["definition"]) == json.loads(text) and current["roleArn"] == role_arn
            and covers(current.get("loggingConfiguration"), logging)):
        acts.same("definition, role and logging")
    else:
        acts.change("update the definition, role and logging", lambda: _retry(
            lambda: sfn.update_state_machine(stateMachineArn=arn, definition=text,
                                             roleArn=role_arn, loggingConfiguration=logging),
            _role_not_ready, sleep))
    return arn


def schedule_input(names: StackNames, manifest_url: str) -> dict[str, str]:
    """The execution input of a scheduled run: a fresh work prefix and report per run."""
    return {"manifest": manifest_url, "work": f"s3://{names.bucket}/{policies.WORK}{EXECUTION_ID}/",
            "run_id": EXECUTION_ID,
            "report": f"s3://{names.bucket}/{policies.REPORTS}{EXECUTION_ID}.json"}


def ensure_schedule(scheduler: Any, names: StackNames, expression: str, manifest_url: str,
                    role_arn: str, acts: Actions) -> str:
    """An EventBridge Scheduler schedule starting the state machine on ``manifest_url``."""
    acts.log(f"schedule {names.schedule} ({expression})")
    desired = {
        "ScheduleExpression": expression, "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED", "Description": f"tiffpipe {names.stack}: runs {manifest_url}",
        "Target": {"Arn": names.state_machine_arn, "RoleArn": role_arn,
                   "Input": json.dumps(schedule_input(names, manifest_url)),
                   "RetryPolicy": SCHEDULE_RETRY},
    }
    current = _get(lambda: scheduler.get_schedule(Name=names.schedule),
                   "ResourceNotFoundException")
    if current is None:
        made = acts.change(f"create schedule {names.schedule}", lambda: scheduler.create_schedule(
            Name=names.schedule, **desired))
        return str(made["ScheduleArn"]) if made else ""
    if covers(current, desired):
        acts.same("expression, target and input")
    else:
        acts.change("update the expression, target and input", lambda: scheduler.update_schedule(
            Name=names.schedule, **desired))
    return str(current["Arn"])


# --- the whole stack -------------------------------------------------------------------------


def _pushed_images(clients: Clients, names: StackNames, config: DeployConfig,
                   log: Callable[[str], None]) -> dict[str, str]:
    """--skip-build: the image pushed last to each of the stack's ECR repositories."""
    if config.registry:
        raise AwsError("--skip-build finds the images in ECR; with --registry, build them "
                       "(leave out --skip-build)")
    ecr = clients("ecr")
    found = {}
    for step in STEPS:
        name = names.repository(step)
        repo = _get(lambda n=name: ecr.describe_repositories(repositoryNames=[n])[
            "repositories"][0], "RepositoryNotFoundException")
        uri = repo["repositoryUri"] if repo else f"{names.registry()}/{name}"
        found[step] = f"{uri}@{latest_digest(ecr, name)}"
        log(f"image {step} (--skip-build: the last one pushed): {found[step]}")
    return found


def _build_images(config: DeployConfig, clients: Clients, repos: dict[str, str], acts: Actions,
                  build: Callable[..., str], run: Any) -> dict[str, str | None]:
    """``repo@sha256:...`` of each step, built and pushed; None for those a dry run would
    build."""
    acts.log(f"images ({config.arch})")
    if acts.dry_run:
        for step in STEPS:
            acts.change(f"build images/{step}/Dockerfile and push it to {repos[step]}", None)
        return dict.fromkeys(STEPS)
    if not config.registry:
        docker_images.ecr_login(clients("ecr"), run)
    built: dict[str, str | None] = {}
    for step in STEPS:
        digest = build(step, config.arch, repos[step], base_image=config.base_image, run=run,
                       log=acts.log)
        built[step] = f"{repos[step]}@{digest}"
        acts.log(f"  {step}: {built[step]}")
    return built


def _schedule_manifest(clients: Clients, names: StackNames, config: DeployConfig) -> None:
    """Check the schedule options and the manifest (read only: nothing is changed yet)."""
    if config.schedule_manifest and not config.schedule:
        raise AwsError('--schedule-manifest needs --schedule "cron(...)" or "rate(...)"')
    if config.schedule and not config.schedule_manifest:
        raise AwsError("--schedule needs --schedule-manifest: the manifest every run uses "
                       "(s3://... that exists, or a local file to upload)")
    if config.schedule and config.schedule_manifest:
        read_manifest(clients("s3"), config.schedule_manifest)


def deploy(config: DeployConfig, clients: Clients, log: Callable[[str], None] | None = None,
           build: Callable[..., str] = docker_images.build_and_push,
           run: Any = subprocess.run, sleep: Callable[[float], None] = time.sleep,
           ) -> dict[str, Any]:
    """Create or update every resource of the stack; what it is made of (names, ARNs) and
    which changes were made (``changes``: empty when the stack was up to date)."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    acts = Actions(config.dry_run, log)
    # preflight: whatever can stop the deploy is checked before anything is changed
    names = clients.names(config.stack)
    log(f"stack {names.stack}: account {names.account}, region {names.region}"
        + (" (dry run: nothing is changed)" if config.dry_run else ""))
    _schedule_manifest(clients, names, config)
    pushed = _pushed_images(clients, names, config, log) if config.skip_build else None
    if not config.skip_build and not config.dry_run:
        docker_images.check_docker(run)
    data = config.data or [policies.DataLocation(names.bucket)]

    ensure_bucket(clients("s3"), names, acts)
    if config.registry:
        repos = {s: f"{config.registry.rstrip('/')}/{names.repository(s)}" for s in STEPS}
    else:
        repos = {s: ensure_repository(clients("ecr"), names, s, acts) for s in STEPS}
    images: dict[str, str | None] = dict(pushed) if pushed else _build_images(
        config, clients, repos, acts, build, run)
    logs, iam = clients("logs"), clients("iam")
    groups = {g: ensure_log_group(logs, names, g, acts) for g in names.log_groups}
    roles = {s: ensure_role(iam, names, names.function_role(s), policies.trust_policy("lambda"),
                            policies.function_policy(s, names, data), acts,
                            f"tiffpipe {names.stack}: the {s} function")
             for s in STEPS}
    roles["states"] = ensure_role(
        iam, names, names.state_machine_role, policies.trust_policy("states", names.account),
        policies.state_machine_policy(names), acts, f"tiffpipe {names.stack}: the state machine")
    functions = {s: ensure_function(clients("lambda"), names, s, images[s], roles[s],
                                    config.arch, acts, sleep) for s in STEPS}
    text = definition.render({s: names.function_arn(s) for s in STEPS})
    machine = ensure_state_machine(clients("stepfunctions"), names, text, roles["states"],
                                   groups[names.state_machine_log_group], acts, sleep)
    schedule = _schedule(config, clients, names, roles, acts)

    if config.dry_run:
        log(f"dry run: {len(acts.changes)} change(s) would be made; nothing was changed")
    elif acts.changes:
        log(f"done: {len(acts.changes)} change(s) made")
    else:
        log("nothing changed: the stack is up to date")
    return {"stack": names.stack, "account": names.account, "region": names.region,
            "bucket": names.bucket, "state_machine": machine, "functions": functions,
            "images": images, "repositories": repos, "roles": roles,
            "log_groups": list(groups), "schedule": schedule, "dry_run": config.dry_run,
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
            acts.log("schedule manifest")
            current = _get(lambda: s3.get_object(Bucket=names.bucket, Key=manifest.split(
                "/", 3)[3])["Body"].read().decode("utf-8"), "NoSuchKey", "NoSuchBucket", "404")
            with open(local, encoding="utf-8") as fh:
                same = fh.read() == current
            if same:
                acts.same(manifest)
            else:
                acts.change(f"upload {local} to {manifest}", lambda: upload_manifest(
                    s3, local, names.bucket, "schedule"))
        roles["scheduler"] = ensure_role(
            clients("iam"), names, names.scheduler_role,
            policies.trust_policy("scheduler", names.account), policies.scheduler_policy(names),
            acts, f"tiffpipe {names.stack}: the schedule")
        return ensure_schedule(scheduler, names, config.schedule, manifest, roles["scheduler"],
                               acts)
    if config.remove_schedule:
        delete_schedule(clients, names, acts)
        return None
    existing = _get(lambda: scheduler.get_schedule(Name=names.schedule),
                    "ResourceNotFoundException")
    if existing:
        acts.log(f"schedule {names.schedule}: kept as it is ({existing['ScheduleExpression']}; "
                 "--no-schedule removes it)")
        roles["scheduler"] = names.role_arn(names.scheduler_role)
        return str(existing["Arn"])
    return None


# --- destroy --------------------------------------------------------------------------------


def _delete(acts: Actions, what: str, exists: bool, call: Callable[[], Any]) -> None:
    if exists:
        acts.change(f"delete {what}", call)
    else:
        acts.log(f"  {what}: not found, nothing to delete")


def delete_schedule(clients: Clients, names: StackNames, acts: Actions) -> None:
    scheduler, iam = clients("scheduler"), clients("iam")
    found = _get(lambda: scheduler.get_schedule(Name=names.schedule),
                 "ResourceNotFoundException")
    _delete(acts, f"schedule {names.schedule}", found is not None,
            lambda: scheduler.delete_schedule(Name=names.schedule))
    delete_role(iam, names.scheduler_role, acts)


def delete_role(iam: Any, role: str, acts: Actions) -> None:
    """A role with its inline and attached policies (they must go first)."""
    found = _get(lambda: iam.get_role(RoleName=role), "NoSuchEntity")

    def remove() -> None:
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=policy)
        for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=role)
    _delete(acts, f"role {role}", found is not None, remove)


def empty_bucket(s3: Any, bucket: str) -> None:
    """Delete every object (every version and delete marker) of a bucket."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})


def destroy(config: DeployConfig, clients: Clients, delete_bucket: bool = False,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Remove what deploy made, in reverse order (nothing left refers to a removed resource).

    The bucket (manifests, reports, maybe outputs) is kept unless ``delete_bucket``.
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    acts = Actions(config.dry_run, log)
    names = clients.names(config.stack)
    log(f"destroy stack {names.stack}: account {names.account}, region {names.region}"
        + (" (dry run: nothing is changed)" if config.dry_run else ""))
    delete_schedule(clients, names, acts)
    sfn = clients("stepfunctions")
    found = _get(lambda: sfn.describe_state_machine(stateMachineArn=names.state_machine_arn),
                 "StateMachineDoesNotExist")
    _delete(acts, f"state machine {names.state_machine}", found is not None,
            lambda: sfn.delete_state_machine(stateMachineArn=names.state_machine_arn))
    lam = clients("lambda")
    for step in STEPS:
        name = names.function(step)
        found = _get(lambda n=name: lam.get_function(FunctionName=n),
                     "ResourceNotFoundException")
        _delete(acts, f"function {name}", found is not None,
                lambda n=name: lam.delete_function(FunctionName=n))
    logs = clients("logs")
    for group in names.log_groups:
        found = [g for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
                 if g["logGroupName"] == group]
        _delete(acts, f"log group {group}", bool(found),
                lambda g=group: logs.delete_log_group(logGroupName=g))
    iam = clients("iam")
    for role in [names.state_machine_role, *(names.function_role(s) for s in STEPS)]:
        delete_role(iam, role, acts)
    if not config.registry:
        ecr = clients("ecr")
        for step in STEPS:
            repo = names.repository(step)
            found = _get(lambda r=repo: ecr.describe_repositories(repositoryNames=[r]),
                         "RepositoryNotFoundException")
            _delete(acts, f"ECR repository {repo} and its images", found is not None,
                    lambda r=repo: ecr.delete_repository(repositoryName=r, force=True))
    s3 = clients("s3")
    exists = _get(lambda: s3.head_bucket(Bucket=names.bucket), "404", "NoSuchBucket",
                  "NotFound") is not None
    if delete_bucket:
        _delete(acts, f"bucket {names.bucket} and everything in it", exists,
                lambda: (empty_bucket(s3, names.bucket), s3.delete_bucket(Bucket=names.bucket)))
    elif exists:
        log(f"  bucket {names.bucket}: kept (manifests, reports); --delete-bucket removes it")
    log(f"dry run: {len(acts.changes)} deletion(s) would be made; nothing was changed"
        if config.dry_run else f"done: {len(acts.changes)} deletion(s)")
    return {"stack": names.stack, "account": names.account, "region": names.region,
            "deleted": acts.changes, "bucket_kept": exists and not delete_bucket,
            "dry_run": config.dry_run}
