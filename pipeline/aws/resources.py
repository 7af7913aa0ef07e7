"""The resources of a stack, one at a time: re-runnable ``ensure_*`` steps (get or create,
then update only what differs) and the ``delete_*`` steps that remove them, over boto3 clients
passed in. Every change goes through :class:`pipeline.aws.actions.Actions`.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import (
    BUCKET_TAG,
    REGION_TAG,
    STACK_TAG,
    STEPS,
    AwsError,
    Clients,
    DeployUsageError,
    StackNames,
    policies,
)
from pipeline.aws import images as docker_images
from pipeline.aws.actions import (
    Actions,
    call_failed,
    covers,
    error_code,
    get_or_none,
    retry,
    stack_tags,
)
from pipeline.aws.lock import LOCK_KEY
from pipeline.aws.versions import same_definition
from pipeline.core.constants import FUNCTION_SIZES
from pipeline.core.events import RunInput, to_payload
from pipeline.engine import definition
from pipeline.ui import uninterrupted

POLICY_NAME = "tiffpipe"
#: days kept: work files (the lifecycle rule), logs
WORK_DAYS, LOG_DAYS = 7, 30
#: images kept per repository (older ones expire)
KEEP_IMAGES = 10
#: a scheduled start is retried this often, for this long, when Step Functions refuses it
SCHEDULE_RETRY = {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600}
#: EventBridge Scheduler fills these in at each invocation
EXECUTION_ID = "<aws.scheduler.execution-id>"


# --- whose a resource is ---------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A resource of one of a stack's names that exists: what it is (``ECR repository
    tiffpipe-x1-split``), its tags (None: the schedule, which takes none; ``target``, the
    state machine it starts, says whose it is), and the AWS CLI command that tags it."""

    what: str
    tags: dict[str, str] | None
    tag_command: str = ""
    target: str | None = None
    #: the stack's bucket that a deploy made and could not tag (it stopped: killed, or its
    #: tagging refused): no tags at all, and empty (or holding only the deploy lock)
    half_made: bool = False

    def is_stacks(self, names: StackNames) -> bool:
        """Whether the stack ``names`` made it: tagged :data:`~pipeline.aws.STACK_TAG` with
        its name, as deploy has tagged every resource it makes from the first tiffpipe on
        (roles made before ``tiffpipe:region`` too); a schedule when it starts the stack's
        state machine; a :attr:`half_made` bucket (the deploy's bucket step tags it)."""
        if self.half_made:
            return True
        if self.tags is None:
            return self.target == names.state_machine_arn
        return self.tags.get(STACK_TAG) == names.stack

    def why_not(self, names: StackNames) -> str:
        if self.tags is None:
            return f"it starts {self.target or 'no state machine'}, not stack {names.stack}'s"
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.tags.items())) or "none"
        return f"it is not tagged {STACK_TAG}={names.stack} (its tags: {shown})"


def _tags(pairs: list[dict[str, str]], key: str = "Key", value: str = "Value"
          ) -> dict[str, str]:
    return {p[key]: p[value] for p in pairs}


def _read(action: str, call: Callable[[], Any]) -> Any:
    """``call()``, a read of whose a resource is; a DeployUsageError when AWS refuses it
    (AccessDenied: a deployer policy printed before deploy.py read tags lacks ``action``)."""
    try:
        return call()
    except ClientError as exc:
        if error_code(exc) not in ("AccessDenied", "AccessDeniedException", "403"):
            raise
        raise DeployUsageError(
            f"deploy.py reads whose the stack's resources are (their tags) before any change, "
            f"and these credentials may not: {action} was refused ({call_failed(exc)}). Give "
            "them the policy deploy.py --print-deployer-policy prints now (one printed by an "
            f"older deploy.py lacks {action}), then run this again. Nothing was changed"
        ) from exc


def _half_made(s3: Any, bucket: str) -> bool:
    """Whether the untagged ``bucket`` is the stack's that a deploy made and stopped before
    tagging: it holds nothing, or only the deploy lock (taken by a later deploy)."""
    listed = _read("s3:ListBucket", lambda: s3.list_objects_v2(Bucket=bucket, MaxKeys=2))
    return all(item["Key"] == LOCK_KEY for item in listed.get("Contents", []))


def existing_resources(clients: Clients, names: StackNames, registry: bool = False
                       ) -> list[Found]:
    """Every resource of the stack's names that exists, with its tags (read only): the
    bucket (this account's), the ECR repositories (not with ``registry``), the IAM roles, the
    functions, the state machine, the log groups and the schedule. A DeployUsageError when a
    tag cannot be read (:func:`_read`)."""
    where = clients.options(names.region)
    label = f"{STACK_TAG}={names.stack}"

    def command(*words: str) -> str:
        return shlex.join(["aws", *words, *where])

    found: list[Found] = []
    s3 = clients("s3")
    if get_or_none(lambda: s3.head_bucket(Bucket=names.bucket), "404", "NoSuchBucket",
                   "NotFound", "403", "AccessDenied") is not None:  # (403: ensure_bucket's)
        tags = _read("s3:GetBucketTagging", lambda: get_or_none(
            lambda: s3.get_bucket_tagging(Bucket=names.bucket)["TagSet"], "NoSuchTagSet"))
        found.append(Found(f"bucket {names.bucket}", _tags(tags or []), command(
            "s3api", "put-bucket-tagging", "--bucket", names.bucket, "--tagging",
            f"TagSet=[{{Key={STACK_TAG},Value={names.stack}}}]") + " (it replaces the "
            "bucket's tags: add those it has to the set)",
            half_made=not tags and _half_made(s3, names.bucket)))
    if not registry:
        ecr = clients("ecr")
        for name in map(names.repository, STEPS):
            repo = get_or_none(lambda n=name: ecr.describe_repositories(
                repositoryNames=[n])["repositories"][0], "RepositoryNotFoundException")
            if repo:
                arn = repo["repositoryArn"]
                found.append(Found(f"ECR repository {repo['repositoryName']}", _tags(
                    _read("ecr:ListTagsForResource", lambda a=arn: ecr.list_tags_for_resource(
                        resourceArn=a)["tags"])), command(
                    "ecr", "tag-resource", "--resource-arn", arn, "--tags",
                    f"Key={STACK_TAG},Value={names.stack}")))
    iam = clients("iam")
    for role in names.roles:
        current = get_or_none(lambda r=role: iam.get_role(RoleName=r)["Role"], "NoSuchEntity")
        if current:
            found.append(Found(f"IAM role {role}", _tags(current.get("Tags", [])), command(
                "iam", "tag-role", "--role-name", role, "--tags",
                f"Key={STACK_TAG},Value={names.stack}")))
    lam = clients("lambda")
    for step in STEPS:
        function = get_or_none(lambda s=step: lam.get_function(FunctionName=names.function(s)),
                               "ResourceNotFoundException")
        if function:
            found.append(Found(f"function {names.function(step)}", function.get("Tags") or {},
                               command("lambda", "tag-resource", "--resource",
                                       names.function_arn(step), "--tags", label)))
    sfn = clients("stepfunctions")
    if get_or_none(lambda: sfn.describe_state_machine(stateMachineArn=names.state_machine_arn),
                   "StateMachineDoesNotExist"):
        found.append(Found(f"state machine {names.state_machine}", _tags(
            _read("states:ListTagsForResource", lambda: sfn.list_tags_for_resource(
                resourceArn=names.state_machine_arn)["tags"]), "key", "value"), command(
                "stepfunctions", "tag-resource", "--resource-arn", names.state_machine_arn,
                "--tags", f"key={STACK_TAG},value={names.stack}")))
    logs = clients("logs")
    for group in names.log_groups:
        if any(g["logGroupName"] == group for g in logs.describe_log_groups(
                logGroupNamePrefix=group)["logGroups"]):
            found.append(Found(f"log group {group}", _read(
                "logs:ListTagsLogGroup", lambda g=group: logs.list_tags_log_group(
                    logGroupName=g)["tags"]), command("logs", "tag-log-group",
                                                     "--log-group-name", group, "--tags",
                                                     label)))
    schedule = get_or_none(lambda: clients("scheduler").get_schedule(Name=names.schedule),
                           "ResourceNotFoundException")
    if schedule:
        found.append(Found(f"schedule {names.schedule}", None,
                           target=schedule.get("Target", {}).get("Arn")))
    return found


def not_the_stacks(clients: Clients, names: StackNames, registry: bool = False
                   ) -> dict[str, Found]:
    """The resources of the stack's names that exist and that it did not make
    (:meth:`Found.is_stacks`), by what each is: someone else's, which a deploy must not take
    over nor a --destroy delete."""
    return {f.what: f for f in existing_resources(clients, names, registry)
            if not f.is_stacks(names)}


def refuse_not_the_stacks(clients: Clients, names: StackNames, registry: bool,
                          what: str = "this deploy") -> None:
    """A DeployUsageError, before any change, when a resource of the stack's names exists
    that the stack did not make (:func:`not_the_stacks`): ``what`` (a deploy, a --rollback)
    would take it over, rewriting its settings and permissions."""
    theirs = not_the_stacks(clients, names, registry)
    if not theirs:
        return
    tagging = [f"  {f.tag_command}" for f in theirs.values() if f.tag_command]
    raise DeployUsageError(
        f"stack {names.stack!r}: {len(theirs)} resource(s) of its names exist that it did "
        f"not make, and {what} would take them over (rewrite their settings and "
        "permissions; a --destroy leaves them):\n"
        + "".join(f"  {w}: {f.why_not(names)}\n" for w, f in theirs.items())
        + "Give this stack another --stack name; or delete or rename those, if they are no "
        "longer used"
        + (f"; or, if they are really stack {names.stack}'s (made by hand, or restored "
           "without their tags), tag them as its:\n" + "\n".join(tagging) if tagging else "")
        + "\nNothing was changed")


# --- bucket ------------------------------------------------------------------------------


def bucket_lifecycle() -> dict[str, Any]:
    return {"Rules": [{
        "ID": "tiffpipe-expire-work", "Status": "Enabled", "Filter": {"Prefix": policies.WORK},
        "Expiration": {"Days": WORK_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}


def ensure_bucket(s3: Any, names: StackNames, acts: Actions) -> str:
    """The stack bucket: encrypted (SSE-S3), public access blocked, work files expiring,
    requests over plain HTTP refused (its policy; not where S3 itself is reached over plain
    HTTP, an emulator's endpoint). Tagged as the stack's as it is made (removed again if
    that fails, for a rerun to make it); one a deploy made and stopped before tagging (no
    tags: :attr:`Found.half_made`, the only untagged one a deploy gets this far with) is
    tagged now."""
    bucket = names.bucket
    acts.heading(f"bucket {bucket}")

    def tag() -> None:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [
            {"Key": k, "Value": v} for k, v in stack_tags(names).items()]})

    try:
        s3.head_bucket(Bucket=bucket)
        exists = True
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise AwsError(f"bucket {bucket} exists but this account cannot use it "
                           f"({error_code(exc)}): choose another --stack") from exc
        exists = False
    if not exists:
        args: dict[str, Any] = {"Bucket": bucket}
        if names.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": names.region}
        def create() -> None:
            with uninterrupted():  # (a bucket left untagged would be taken as another's)
                s3.create_bucket(**args)
                try:
                    tag()
                except Exception:  # (throttled, refused): the empty bucket goes, for the
                    with contextlib.suppress(ClientError, BotoCoreError):  # rerun to make
                        s3.delete_bucket(Bucket=bucket)
                    raise
        acts.change(f"create bucket {bucket}", create)
    elif not get_or_none(lambda: s3.get_bucket_tagging(Bucket=bucket)["TagSet"],
                         "NoSuchTagSet"):  # (half made: refuse_not_the_stacks let only it by)
        acts.change(f"tag bucket {bucket} as stack {names.stack}'s: an earlier deploy made it "
                    "and stopped before tagging it (it is empty)", tag)

    encryption = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                             "BucketKeyEnabled": True}]}
    _ensure_setting(acts, exists and get_or_none(lambda: s3.get_bucket_encryption(Bucket=bucket)[
        "ServerSideEncryptionConfiguration"], "ServerSideEncryptionConfigurationNotFoundError"),
        encryption, "default encryption", "turn on default encryption (SSE-S3)",
        lambda: s3.put_bucket_encryption(Bucket=bucket,
                                         ServerSideEncryptionConfiguration=encryption))

    block = {k: True for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                               "RestrictPublicBuckets")}
    _ensure_setting(acts, exists and get_or_none(lambda: s3.get_public_access_block(Bucket=bucket)[
        "PublicAccessBlockConfiguration"], "NoSuchPublicAccessBlockConfiguration"),
        block, "public access block", "block all public access",
        lambda: s3.put_public_access_block(Bucket=bucket,
                                           PublicAccessBlockConfiguration=block))

    lifecycle = bucket_lifecycle()
    _ensure_setting(acts, exists and get_or_none(lambda: {
        "Rules": s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]},
        "NoSuchLifecycleConfiguration"),
        lifecycle, f"lifecycle (work/ expires after {WORK_DAYS} days)",
        f"set the lifecycle: work/ expires after {WORK_DAYS} days",
        lambda: s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                                      LifecycleConfiguration=lifecycle))

    if not str(s3.meta.endpoint_url).startswith("https://"):  # every request would be refused
        acts.log(f"  bucket policy: HTTPS only left out, S3 is reached over plain HTTP here "
                 f"({s3.meta.endpoint_url}: an emulator)")
        return bucket
    # requests over plain HTTP refused; a statement of the bucket's owner is kept
    ours = policies.bucket_policy(bucket, names.partition)["Statement"]
    current = exists and get_or_none(lambda: json.loads(s3.get_bucket_policy(Bucket=bucket)[
        "Policy"]), "NoSuchBucketPolicy")
    _ensure_setting(acts, policies.statements_in(current or None, ours), ours,
                    "bucket policy (HTTPS only)", "set the bucket policy: HTTPS only",
                    lambda: s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(
                        policies.merged_bucket_policy(current or None, ours))))
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
    acts.heading(f"ECR repository {name}")
    repo = get_or_none(lambda: ecr.describe_repositories(repositoryNames=[name])[
        "repositories"][0], "RepositoryNotFoundException")
    uri = repo["repositoryUri"] if repo else f"{names.registry()}/{name}"
    if repo is None:
        made = acts.change(f"create ECR repository {name} (scan on push)",
                           lambda: ecr.create_repository(
                               repositoryName=name,
                               imageScanningConfiguration={"scanOnPush": True},
                               tags=[{"Key": k, "Value": v} for k, v in stack_tags(names).items()]))
        if made:
            uri = made["repository"]["repositoryUri"]
    elif not repo.get("imageScanningConfiguration", {}).get("scanOnPush"):
        acts.change("turn on scan on push", lambda: ecr.put_image_scanning_configuration(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}))
    else:
        acts.same("scan on push")
    policy = ecr_lifecycle()
    current = repo and get_or_none(lambda: json.loads(ecr.get_lifecycle_policy(repositoryName=name)[
        "lifecyclePolicyText"]), "LifecyclePolicyNotFoundException")
    if covers(current, policy):
        acts.same(f"lifecycle (keep {KEEP_IMAGES} images)")
    else:
        acts.change(f"set the lifecycle: keep the {KEEP_IMAGES} most recent images",
                    lambda: ecr.put_lifecycle_policy(repositoryName=name,
                                                     lifecyclePolicyText=json.dumps(policy)))
    return str(uri)


def latest_digest(ecr: Any, repository: str, arch: str) -> str:
    """The digest of the image built for ``arch`` (a tag beginning with its
    :func:`~pipeline.aws.images.tag_prefix`) pushed last to an ECR repository (for
    --skip-build)."""
    tag_prefix = docker_images.tag_prefix(arch)
    found = get_or_none(lambda: [d for page in ecr.get_paginator("describe_images").paginate(
        repositoryName=repository) for d in page["imageDetails"]], "RepositoryNotFoundException")
    if found is None:
        raise AwsError(f"--skip-build: there is no ECR repository {repository} (in this "
                       "account and region) to deploy an image from: deploy once without "
                       "--skip-build, which makes the repositories and pushes the images; "
                       "nothing was changed")
    if not found:
        raise AwsError(f"--skip-build: no image in the ECR repository {repository}: deploy "
                       "once without --skip-build to build and push the images")
    for_arch = [d for d in found if any(t.startswith(tag_prefix) for t in d.get("imageTags", []))]
    if not for_arch:
        raise AwsError(f"--skip-build: none of the {len(found)} image(s) in the ECR repository "
                       f"{repository} is tagged as built for {arch} ({tag_prefix}...): they "
                       f"were built for the other architecture, or by a tiffpipe that did not "
                       f"tag the architecture. Deploy once without --skip-build (or with the "
                       f"--arch they were built for); nothing was changed")
    return str(max(for_arch, key=lambda d: d["imagePushedAt"])["imageDigest"])


# --- IAM, logs -----------------------------------------------------------------------------


def role_policy(iam: Any, role: str) -> dict[str, Any] | None:
    """The inline policy :func:`ensure_role` gives ``role`` (botocore decodes the document),
    or None when there is none (or no role)."""
    doc: dict[str, Any] | None = get_or_none(lambda: iam.get_role_policy(
        RoleName=role, PolicyName=POLICY_NAME)["PolicyDocument"], "NoSuchEntity")
    return doc


def ensure_role(iam: Any, names: StackNames, role: str, trust: dict[str, Any],
                policy: dict[str, Any], acts: Actions, description: str) -> str:
    """A role with exactly this trust policy and one inline policy, tagged with the region
    of the stack it belongs to (IAM is global: :mod:`pipeline.aws.roles`); its ARN."""
    acts.heading(f"IAM role {role}")
    current = get_or_none(lambda: iam.get_role(RoleName=role)["Role"], "NoSuchEntity")
    region = {"Key": REGION_TAG, "Value": names.region}
    if current is None:
        acts.change(f"create role {role}", lambda: iam.create_role(
            RoleName=role, AssumeRolePolicyDocument=json.dumps(trust), Description=description,
            Tags=[*({"Key": k, "Value": v} for k, v in stack_tags(names).items()), region]))
    else:
        if region not in current.get("Tags", []):  # (a role made before the tag)
            acts.change(f"tag it with its stack's region ({REGION_TAG}={names.region})",
                        lambda: iam.tag_role(RoleName=role, Tags=[region]))
        if current["AssumeRolePolicyDocument"] != trust:
            acts.change("update the trust policy", lambda: iam.update_assume_role_policy(
                RoleName=role, PolicyDocument=json.dumps(trust)))
        else:
            acts.same("trust policy")
    inline = current and role_policy(iam, role)
    if inline == policy:
        acts.same("permissions")
    else:
        acts.change(f"{'set' if inline is None else 'update'} the permissions",
                    lambda: iam.put_role_policy(RoleName=role, PolicyName=POLICY_NAME,
                                                PolicyDocument=json.dumps(policy)))
    return names.role_arn(role)


def ensure_log_group(logs: Any, names: StackNames, group: str, acts: Actions) -> str:
    """A log group kept LOG_DAYS days (made here, so destroy can remove it)."""
    acts.heading(f"log group {group}")
    found = [g for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
             if g["logGroupName"] == group]
    if not found:
        acts.change(f"create log group {group} ({LOG_DAYS} days)", lambda: (
            logs.create_log_group(logGroupName=group, tags=stack_tags(names)),
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
    return error_code(exc) in ("InvalidParameterValueException", "AccessDeniedException") and (
        "role" in message.lower() or "assume" in message.lower())


def ensure_function(lam: Any, names: StackNames, step: str, image: str | None, role_arn: str,
                    arch: str, acts: Actions, sleep: Callable[[float], None] = time.sleep,
                    packages: dict[str, str] | None = None,
                    environment: dict[str, str] | None = None) -> tuple[str, bool]:
    """A container-image function at ``image`` (``repo@sha256:...``; None: an image still to
    build in a dry run), sized by FUNCTION_SIZES; waits until it is active/updated. Its ARN,
    and whether its code or configuration was (in a dry run: would be) made or changed.
    ``packages``: the tags recording the user's packages ``image`` has
    (:func:`~pipeline.aws.images.package_tags`), set once the image is deployed (those it
    has not are removed); None leaves the function's as they are (--skip-build).
    ``environment``: its environment variables, exactly (none by default: those an earlier
    deploy set and no step reads are removed)."""
    name = names.function(step)
    size = FUNCTION_SIZES[step]
    acts.heading(f"Lambda function {name}")
    settings: dict[str, Any] = {
        "Role": role_arn, "MemorySize": size.memory, "Timeout": size.timeout,
        "EphemeralStorage": {"Size": size.ephemeral},
        "Description": f"tiffpipe {names.stack}: the {step} step"}
    environment = environment or {}
    architectures = [docker_images.LAMBDA_ARCHITECTURES[arch]]
    current = get_or_none(lambda: lam.get_function(FunctionName=name), "ResourceNotFoundException")
    shown = image or f"the {step} image to be built"
    if current is None:
        def create() -> None:
            retry(lambda: lam.create_function(
                FunctionName=name, PackageType="Image", Code={"ImageUri": image},
                Architectures=architectures, Tags={**stack_tags(names), **(packages or {})},
                **settings, **({"Environment": {"Variables": environment}} if environment
                               else {})),
                _role_not_ready, sleep)
            lam.get_waiter("function_active_v2").wait(FunctionName=name)
        acts.change(f"create function {name} from {shown} ({size.memory} MB, "
                    f"{size.timeout} s, /tmp {size.ephemeral} MB)", create)
        return names.function_arn(step), True
    config = current["Configuration"]
    # a function whose image could not be set up (State Failed: the image deleted, access to
    # its repository lost; or its last update failed) is deployed again, whatever it names
    failed = "Failed" in (config.get("State"), config.get("LastUpdateStatus"))
    if failed:
        acts.log(f"  it is in a failed state ({config.get('StateReasonCode') or ''} "
                 f"{config.get('StateReason') or config.get('LastUpdateStatusReason') or ''})"
                 .replace("( ", "(").replace(" )", ")") + ": its image is deployed again")
    new_code = image is None or failed or current.get("Code", {}).get("ImageUri") != image or \
        config.get("Architectures") != architectures
    if new_code:
        def update_code() -> None:
            lam.update_function_code(FunctionName=name, ImageUri=image,
                                     Architectures=architectures)
            lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        acts.change(f"deploy {shown}" + (" (if its digest changed)" if image is None else ""),
                    update_code)
    else:
        acts.same(f"image {image}")
    if packages is not None:  # after the image they describe
        _ensure_package_tags(lam, str(config.get("FunctionArn", names.function_arn(step))),
                             current.get("Tags") or {}, packages, acts)
    # exactly ``environment``: those an earlier deploy set that no step reads go
    other_env = (config.get("Environment", {}).get("Variables") or {}) != environment
    if other_env:
        settings["Environment"] = {"Variables": environment}
    new_config = not covers(config, settings) or other_env
    if not new_config:
        acts.same("configuration")
    else:
        def update_config() -> None:
            retry(lambda: lam.update_function_configuration(FunctionName=name, **settings),
                  _role_not_ready, sleep)
            lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        acts.change("update the configuration (role, size, environment)", update_config)
    return str(config.get("FunctionArn", names.function_arn(step))), new_code or new_config


def _ensure_package_tags(lam: Any, arn: str, tags: dict[str, str], packages: dict[str, str],
                         acts: Actions) -> None:
    """The function's tags recording the user's packages: exactly ``packages``."""
    current = docker_images.recorded_packages(tags)
    shown = docker_images.describe_packages(packages)
    if current == packages:
        acts.same(f"your packages ({shown or 'none'})")
        return
    gone = sorted(set(current) - set(packages))

    def write() -> None:
        if packages:
            lam.tag_resource(Resource=arn, Tags=packages)
        if gone:
            lam.untag_resource(Resource=arn, TagKeys=gone)
    acts.change(f"record your packages in its tags ({shown})" if packages else
                "remove the record of your packages from its tags", write)


def ensure_state_machine(sfn: Any, names: StackNames, text: str, role_arn: str,
                         log_group_arn: str, acts: Actions,
                         sleep: Callable[[float], None] = time.sleep) -> str:
    """The state machine from ``text`` (the rendered definition), logging errors."""
    arn = names.state_machine_arn
    acts.heading(f"state machine {names.state_machine}")
    logging = {"level": "ERROR", "includeExecutionData": False,
               "destinations": [{"cloudWatchLogsLogGroup": {"logGroupArn": log_group_arn}}]}
    current = get_or_none(lambda: sfn.describe_state_machine(stateMachineArn=arn),
                          "StateMachineDoesNotExist")
    if current is None:
        tags = [{"key": STACK_TAG, "value": names.stack}, {"key": BUCKET_TAG,
                                                            "value": names.bucket}]
        acts.change(f"create state machine {names.state_machine}", lambda: retry(
            lambda: sfn.create_state_machine(
                name=names.state_machine, definition=text, roleArn=role_arn, type="STANDARD",
                loggingConfiguration=logging, tags=tags), _role_not_ready, sleep))
        return arn
    if current.get("status") == "DELETING":
        raise AwsError(f"state machine {arn} is still being deleted: wait a minute and run "
                       "deploy.py again")
    # updated whenever the parsed definitions differ, as deploy keeps the one replaced for
    # --rollback then (a concurrency set where none was, of the same number, 8,000, was not
    # updated: --rollback lost its target); the concurrency split only words the change
    moved = definition.concurrency_change(current["definition"], text)
    other = not same_definition(current["definition"], text) and (
        not moved or definition.differs_besides_concurrency(current["definition"], text))
    changed = [part for part, differs in (
        ("the definition", other),
        (moved and f"the {moved}", True),
        ("the role", current["roleArn"] != role_arn),
        ("the logging", not covers(current.get("loggingConfiguration"), logging)))
        if part and differs]
    if not changed:
        acts.same("definition, role and logging")
    else:
        acts.change(f"update {' and '.join(changed)}", lambda: retry(
            lambda: sfn.update_state_machine(stateMachineArn=arn, definition=text,
                                             roleArn=role_arn, loggingConfiguration=logging),
            _role_not_ready, sleep))
    return arn


def schedule_input(names: StackNames, manifest_url: str) -> dict[str, Any]:
    """The execution input (a RunInput) of a scheduled run: a fresh work prefix and report per
    run."""
    return to_payload(RunInput(
        manifest=manifest_url, work=f"s3://{names.bucket}/{policies.WORK}{EXECUTION_ID}/",
        run_id=EXECUTION_ID,
        report=f"s3://{names.bucket}/{policies.REPORTS}{EXECUTION_ID}.json"))


def ensure_schedule(scheduler: Any, names: StackNames, expression: str, manifest_url: str,
                    role_arn: str, acts: Actions) -> str:
    """An EventBridge Scheduler schedule starting the state machine on ``manifest_url``."""
    acts.heading(f"schedule {names.schedule}", f" ({expression})")
    desired = {
        "ScheduleExpression": expression, "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED", "Description": f"tiffpipe {names.stack}: runs {manifest_url}",
        "Target": {"Arn": names.state_machine_arn, "RoleArn": role_arn,
                   "Input": json.dumps(schedule_input(names, manifest_url)),
                   "RetryPolicy": SCHEDULE_RETRY},
    }
    current = get_or_none(lambda: scheduler.get_schedule(Name=names.schedule),
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


# --- destroy --------------------------------------------------------------------------------


def remove_if(acts: Actions, what: str, exists: bool, call: Callable[[], Any],
              theirs: Mapping[str, Found] | None = None, names: StackNames | None = None,
              also: str = "") -> None:
    """Delete ``what`` (``bucket NAME``, ``function NAME``...; ``also``: what goes with it,
    said) if it exists, and unless it is one of ``theirs`` (:func:`not_the_stacks`): left
    as it is then, and said why."""
    found = (theirs or {}).get(what)
    if found is not None and names is not None:
        acts.log(f"  {what}: left as it is, not made by this stack: {found.why_not(names)} "
                 "(--destroy deletes only what deploy made)")
    elif exists:
        acts.change(f"delete {what}{also}", call)
    else:
        acts.log(f"  {what}: not found, nothing to delete")


def delete_schedule(clients: Clients, names: StackNames, acts: Actions,
                    theirs: Mapping[str, Found] | None = None) -> None:
    scheduler, iam = clients("scheduler"), clients("iam")
    found = get_or_none(lambda: scheduler.get_schedule(Name=names.schedule),
                        "ResourceNotFoundException")
    remove_if(acts, f"schedule {names.schedule}", found is not None,
              lambda: scheduler.delete_schedule(Name=names.schedule), theirs, names)
    delete_role(iam, names.scheduler_role, acts, theirs, names)


def delete_role(iam: Any, role: str, acts: Actions, theirs: Mapping[str, Found] | None = None,
                names: StackNames | None = None) -> None:
    """A role with its inline and attached policies (they must go first); not one of
    ``theirs``."""
    found = get_or_none(lambda: iam.get_role(RoleName=role), "NoSuchEntity")

    def remove() -> None:
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=policy)
        for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=role)
    remove_if(acts, f"IAM role {role}", found is not None, remove, theirs, names)


def empty_bucket(s3: Any, bucket: str) -> None:
    """Delete every object (every version and delete marker) of a bucket."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})

