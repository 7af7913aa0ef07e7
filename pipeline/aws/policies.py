"""IAM policy documents of a stack, and the buckets' policies (HTTPS only: the stack
bucket's, which deploy keeps, and a data bucket's, printed), built by pure functions (no
AWS call).

Least privilege: every statement names its resources. The one exception is the CloudWatch
Logs *delivery* actions a state machine needs for logging, which AWS only grants on
``"Resource": "*"`` (:data:`LOG_DELIVERY_ACTIONS`).

What each function touches (see ``pipeline/steps``), hence what it may do:

- split (plan_run, split): reads the manifest, the inputs and the stack's work files;
  lists input prefixes (a scan); writes work files.
- process (plan_job, process, process_unit, process_job, stats, reduce_stats, reduce_node,
  build_levels): reads and writes work files (``build_levels`` only those); ``plan_job``
  reads the input's headers and checks the output by starting a multipart upload of it and
  aborting it (what writing it needs: the check fails where the stack may not write); a
  fused job's ``process_unit`` reads its unit's band straight from the input, so it reads
  inputs (and may list data buckets, to tell a missing input from a denied one);
  ``process_job`` (a fused job of one unit, whole) also publishes its output, as merge does.
- the state machine: invokes the three, runs its Distributed Map children, and reads the
  job lists the Jobs map's ItemReader reads.
- merge (merge, record_failure, report): reads work files (and an input page's XMP packet
  too large for the plan), writes outputs (a multipart upload) and the run report.
- process and merge delete the records of the output uploads they ended (``UPLOAD_RECORDS``),
  split and process the error records of a retried item's failed attempt: nothing else.

``s3:ListBucket`` is granted on whole buckets, without an ``s3:prefix`` condition: S3 answers
a GET or HEAD of a missing object with 404 only to a caller that may list the bucket (403
otherwise), and the steps tell a missing input or work file from a denied one by that.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pipeline.aws import STEPS, StackNames
from pipeline.core.constants import JOBS_FOLDER, UPLOADS_FOLDER

VERSION = "2012-10-17"
#: CloudWatch Logs delivery actions (state machine logging): AWS supports only "*" for these
LOG_DELIVERY_ACTIONS = (
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
)
#: stack bucket prefixes: run manifests, work files, run reports
MANIFESTS, WORK, REPORTS = "manifests/", "work/", "reports/"
#: the records of the output uploads a run's merges began (``work/<run>/jobs/<job>/uploads/``)
UPLOAD_RECORDS = f"{WORK}*/{JOBS_FOLDER}/*/{UPLOADS_FOLDER}/*"
#: S3 bucket names (general purpose buckets): the characters and their ends
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")
#: a KMS key's ARN (IAM grants keys by ARN: an alias cannot be a policy's resource)
_KMS_KEY = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")


@dataclass(frozen=True)
class DataLocation:
    """A bucket (or a prefix of one) the pipeline may read inputs from and write outputs to."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str, option: str = "--data-bucket") -> DataLocation:
        """``bucket`` or ``bucket/prefix`` (an ``s3://`` in front is accepted); ``option``:
        the one that gave it, for the error. The bucket must be a valid S3 bucket name, and
        the prefix free of what a policy's resource would read as a wildcard or a variable
        (``*``, ``?``, ``${``): a location grants exactly what it names."""
        text = text.removeprefix("s3://")
        bucket, _, prefix = text.partition("/")
        if not bucket:
            raise ValueError(f"{option} {text!r}: expected BUCKET or BUCKET/PREFIX")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IP.fullmatch(bucket):
            raise ValueError(f"{option} {text!r}: {bucket!r} is not an S3 bucket name (3 to 63 "
                             "lowercase letters, digits, dots and hyphens, starting and ending "
                             "with a letter or digit)")
        if any(c in prefix for c in ("*", "?", "${")):
            raise ValueError(f"{option} {text!r}: a prefix with * ? or ${{ would be a wildcard "
                             "or a variable in the stack's policies: name the prefix itself")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def holds(self, url: str) -> bool:
        """Whether ``s3://bucket/key`` (an object, or a prefix ending in ``/``) is in this
        location."""
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return bucket == self.bucket and key.startswith(self.prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def bucket_arn(self, partition: str = "aws") -> str:
        return f"arn:{partition}:s3:::{self.bucket}"

    def objects_arn(self, partition: str = "aws") -> str:
        return f"arn:{partition}:s3:::{self.bucket}/{self.prefix}*"


def parse_kms_key(text: str, option: str = "--kms-key") -> str:
    """A ``--kms-key`` (or the ``option`` given, ``--sse-kms-key-id``): the ARN of a KMS key
    that encrypts objects of the data locations."""
    if not _KMS_KEY.fullmatch(text):
        raise ValueError(f"{option} {text!r}: expected a key ARN, arn:aws:kms:REGION:ACCOUNT:"
                         "key/KEY-ID (IAM grants a key by its ARN, not by an alias: "
                         "aws kms describe-key --key-id alias/NAME shows it)")
    return text


def kms_keys_of(policy: dict[str, Any]) -> list[str]:
    """The KMS keys a deployed function's policy (:func:`function_policy`) may use."""
    for statement in policy.get("Statement", []):
        if statement.get("Sid") == "DataKeys":
            resources = statement["Resource"]
            return [resources] if isinstance(resources, str) else list(resources)
    return []


def locations_of(policy: dict[str, Any], sid: str) -> list[DataLocation]:
    """The data locations of a deployed function's policy (:func:`function_policy`) in its
    statement ``sid`` (``ReadInputs``, ``WriteOutputs``): ``arn:...:s3:::bucket/prefix/*``
    each."""
    found = []
    for statement in policy.get("Statement", []):
        if statement.get("Sid") != sid:
            continue
        resources = statement["Resource"]
        for arn in [resources] if isinstance(resources, str) else resources:
            path = arn.split(":::", 1)[1].removesuffix("*")
            bucket, _, prefix = path.partition("/")
            found.append(DataLocation(bucket, prefix))
    return found


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def _allow(sid: str, actions: list[str], resources: list[str] | str,
           condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions),
                                 "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def trust_policy(service: str, account: str | None = None) -> dict[str, Any]:
    """Who may assume a role: one AWS service; with ``account``, only when it acts for that
    account (``aws:SourceAccount``: guards against the confused-deputy problem; Step
    Functions and EventBridge Scheduler set it, Lambda's execution roles take none)."""
    statement: dict[str, Any] = {"Effect": "Allow",
                                 "Principal": {"Service": f"{service}.amazonaws.com"},
                                 "Action": "sts:AssumeRole"}
    if account:
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": account}}
    return _doc(statement)


def _sorted(locations: list[DataLocation]) -> list[DataLocation]:
    return sorted(set(locations), key=lambda d: (d.bucket, d.prefix))


def function_policy(step: str, names: StackNames, data: list[DataLocation],
                    inputs: list[DataLocation] | None = None,
                    kms_keys: list[str] | None = None) -> dict[str, Any]:
    """The inline policy of one function's role (``step``: split, process or merge):
    ``data`` locations are read and written, ``inputs`` only read (originals no output
    may replace); ``kms_keys``: the KMS keys their objects are encrypted with (SSE-KMS),
    used only through S3: decrypted to read (split, process), and data keys made to write
    (process, merge: a multipart upload needs both)."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r} (known: {', '.join(STEPS)})")
    p = names.partition
    stack = f"{names.bucket_arn}/"
    data = _sorted(data)
    readable = _sorted(data + list(inputs or []))
    objects = [d.objects_arn(p) for d in data]
    read_objects = [d.objects_arn(p) for d in readable]
    statements = [
        _allow("OwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
               [names.log_group_arn(names.function_log_group(step))]),
        _allow("ListStackBucket", ["s3:ListBucket"], [names.bucket_arn]),
        # segments are multipart uploads, aborted when a unit or batch fails
        _allow("WorkFiles", ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
               [f"{stack}{WORK}*"]),
    ]
    statements += [
        # split: scans list input prefixes; every step: a missing input is told from a
        # denied one (an input deleted during the run: InputNotFoundError, not a 403)
        _allow("ListDataBuckets", ["s3:ListBucket"],
               sorted({d.bucket_arn(p) for d in readable})),
        # inputs (split units, fused units; merge: an input page's XMP packet too large for
        # the plan, pipeline.adapters.metadata.XmpPackets), manifests kept next to them, and
        # (a scan) which outputs exist
        _allow("ReadInputs", ["s3:GetObject"], read_objects),
    ]
    if step == "split":
        statements.insert(-1, _allow("ReadManifests", ["s3:GetObject"],
                                     [f"{stack}{MANIFESTS}*"]))
        # plan_run of a scan: is an earlier run of it still running (its input's manifest)?
        statements += [
            _allow("ListRunningRuns", ["states:ListExecutions"], [names.state_machine_arn]),
            _allow("ReadRunningRuns", ["states:DescribeExecution"], [names.executions_arn]),
        ]
    if step in ("split", "process"):
        # a unit, batch or node that a Retry finished removes the error record its failed
        # attempt left (pipeline.steps.common.recorded): no other object is deleted
        statements.append(_allow("ClearErrorRecords", ["s3:DeleteObject"],
                                 [f"{stack}{WORK}*/errors/*"]))
    if step in ("process", "merge"):
        # merge, process_job (a job of one unit, whole): a multipart upload; plan_job: one
        # started and aborted, the output's check
        statements.append(_allow("WriteOutputs", ["s3:PutObject", "s3:AbortMultipartUpload"],
                                 objects))
        # merge, process_job (and record_failure) remove the record of an output upload
        # they completed or ended (pipeline.adapters.segments): no other object is deleted
        statements.append(_allow("ClearUploadRecords", ["s3:DeleteObject"],
                                 [f"{stack}{UPLOAD_RECORDS}"]))
    if kms_keys:
        statements.append(_allow(
            "DataKeys", ["kms:Decrypt"] + (["kms:GenerateDataKey"] if step != "split" else []),
            sorted(set(kms_keys)), _through_s3(names)))
    if step == "merge":
        statements += [
            _allow("WriteReports", ["s3:PutObject"], [f"{stack}{REPORTS}*"]),
            # an output there already (if_exists skip or fail): whose is it? (HeadObject: a
            # retried merge's own, published by its earlier attempt, is not another's)
            _allow("LookAtOutputs", ["s3:GetObject"], objects),
            # record_failure aborts the uploads a killed unit left open under the job's
            # work prefix (listed), and the output uploads its merge recorded (by id)
            _allow("ListOpenUploads", ["s3:ListBucketMultipartUploads"], [names.bucket_arn]),
        ]
    return _doc(*statements)


def _through_s3(names: StackNames) -> dict[str, Any]:
    """The condition that a KMS key is used only by S3, for the caller (SSE-KMS objects)."""
    return {"StringEquals": {"kms:ViaService": f"s3.{names.region}.amazonaws.com"
                                               + (".cn" if names.partition == "aws-cn" else "")}}


def state_machine_policy(names: StackNames) -> dict[str, Any]:
    """The state machine's role: invoke the stack's three functions (the versions a deployed
    definition names, ``function:NAME:3``; and unversioned, as a definition deployed before
    versioned deploys names them, for its executions still running), run its own Distributed
    Map children, read the job lists its ``Jobs`` map's ItemReader reads (``jobs.json`` of a
    run's work prefix), and deliver its logs."""
    functions = [names.function_arn(s) for s in STEPS]
    return _doc(
        # the Jobs map's ItemReader (s3:getObject) reads the job list PlanRun wrote
        _allow("ReadJobLists", ["s3:GetObject"], [f"{names.bucket_arn}/{WORK}*/jobs.json"]),
        _allow("InvokeOwnFunctions", ["lambda:InvokeFunction"],
               functions + [f"{arn}:*" for arn in functions]),
        # a Distributed Map starts child executions of this same state machine
        _allow("StartOwnChildren", ["states:StartExecution"], [names.state_machine_arn]),
        # a Distributed Map child is execution:<machine>/<map label>:<id> (the Jobs map's
        # children start the jobs' own maps: children of children)
        _allow("ManageOwnChildren", ["states:DescribeExecution", "states:StopExecution",
                                     "states:ListMapRuns"],
               [names.executions_arn, child_executions_arn(names)]),
        _allow("OwnMapRuns", ["states:DescribeMapRun", "states:UpdateMapRun"],
               [f"{names.map_runs_arn}"]),
        # CloudWatch Logs delivery actions cannot be scoped to a log group: AWS requires "*"
        _allow("LogDelivery", list(LOG_DELIVERY_ACTIONS), "*"),
    )


def child_executions_arn(names: StackNames) -> str:
    """Every Distributed Map child execution of the stack's state machine, at any depth."""
    return names.state_machine_arn.replace(":stateMachine:", ":execution:", 1) + "/*"


def scheduler_policy(names: StackNames) -> dict[str, Any]:
    """The schedule's role: start this state machine, nothing else."""
    return _doc(_allow("StartOwnStateMachine", ["states:StartExecution"],
                       [names.state_machine_arn]))


#: what deploy.py needs beyond its stack's resources: reading the caller's account
#: (GetCallerIdentity needs no permission), an ECR login, the account's Lambda concurrency
_DEPLOYER_ANY_RESOURCE = ("ecr:GetAuthorizationToken", "lambda:GetAccountSettings")


def deployer_policy(names: StackNames, data: list[DataLocation] | None = None,
                    kms_keys: list[str] | None = None) -> dict[str, Any]:
    """What the identity running ``deploy.py`` (deploy, redeploy, ``--rollback``,
    ``--destroy``) of the stack ``names`` needs, and no more: every action it calls, each on
    the stack's own resources (``data``: the data locations, whose buckets it checks and
    whose schedule manifest it reads; ``kms_keys``: the keys an s3:// schedule manifest there
    may be encrypted with, SSE-KMS, decrypted through S3 only: give them only with such a
    manifest, the stack bucket being SSE-S3). ``docs/aws.md`` (Who may deploy) prints it for a
    stack; ``tests/test_deploy.py`` runs deploys (an execution running), a rollback and a
    destroy and checks every call they make is allowed here, on the resource it names.
    ``iam:PassRole`` passes each role only to the service that uses it."""
    p, region, account = names.partition, names.region, names.account
    stack = names.bucket_arn
    data = _sorted(data or [])
    repos = [f"arn:{p}:ecr:{region}:{account}:repository/{names.repository(s)}" for s in STEPS]
    functions = [names.function_arn(s) for s in STEPS]
    roles = [names.function_role(s) for s in STEPS] + [names.state_machine_role,
                                                        names.scheduler_role]
    log_groups = [names.log_group_arn(g) for g in names.log_groups]
    schedule = (f"arn:{p}:scheduler:{region}:{account}:schedule/default/{names.schedule}")

    def passed(sid: str, role_names: list[str], service: str) -> dict[str, Any]:
        return _allow(sid, ["iam:PassRole"], [names.role_arn(r) for r in role_names],
                      {"StringEquals": {"iam:PassedToService": f"{service}.amazonaws.com"}})

    statements = [
        _allow("StackBucket", [
            "s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:ListBucketVersions",
            "s3:PutBucketTagging", "s3:GetBucketTagging", "s3:GetEncryptionConfiguration",
            "s3:PutEncryptionConfiguration", "s3:GetBucketPublicAccessBlock",
            "s3:PutBucketPublicAccessBlock", "s3:GetLifecycleConfiguration",
            "s3:PutLifecycleConfiguration", "s3:GetBucketPolicy", "s3:PutBucketPolicy"],
            [stack]),
        # the schedule manifest (uploaded, read back); --delete-bucket empties the bucket
        _allow("StackObjects", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                "s3:DeleteObjectVersion"], [f"{stack}/*"]),
        _allow("ImageRepositories", [
            "ecr:DescribeRepositories", "ecr:CreateRepository", "ecr:DeleteRepository",
            "ecr:TagResource", "ecr:ListTagsForResource", "ecr:PutImageScanningConfiguration",
            "ecr:GetLifecyclePolicy",
            "ecr:PutLifecyclePolicy", "ecr:DescribeImages",
            # docker push
            "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
            "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage",
            # Lambda reads the image as the caller of CreateFunction/UpdateFunctionCode, and
            # sets the repository's policy for its own pulls when it lacks one
            "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:GetRepositoryPolicy",
            "ecr:SetRepositoryPolicy"], repos),
        _allow("AnyResource", list(_DEPLOYER_ANY_RESOURCE), "*"),
        _allow("LogGroups", ["logs:CreateLogGroup", "logs:DeleteLogGroup",
                             "logs:PutRetentionPolicy", "logs:TagResource",
                             "logs:TagLogGroup", "logs:ListTagsLogGroup"], log_groups),
        _allow("ListLogGroups", ["logs:DescribeLogGroups"],
               [f"arn:{p}:logs:{region}:{account}:log-group:*"]),
        # a state machine's logging is set up by its creator: AWS grants these on "*" only
        _allow("StateMachineLogDelivery", list(LOG_DELIVERY_ACTIONS), "*"),
        _allow("Roles", [
            "iam:GetRole", "iam:CreateRole", "iam:DeleteRole", "iam:TagRole",
            "iam:UpdateAssumeRolePolicy", "iam:GetRolePolicy", "iam:PutRolePolicy",
            "iam:DeleteRolePolicy", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies",
            "iam:DetachRolePolicy"], [names.role_arn(r) for r in roles]),
        passed("PassFunctionRoles", roles[:3], "lambda"),
        passed("PassStateMachineRole", [names.state_machine_role], "states"),
        passed("PassSchedulerRole", [names.scheduler_role], "scheduler"),
        _allow("Functions", [
            "lambda:GetFunction", "lambda:CreateFunction", "lambda:DeleteFunction",
            "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
            "lambda:TagResource", "lambda:UntagResource", "lambda:ListTags",
            "lambda:PublishVersion", "lambda:ListVersionsByFunction"], functions),
        # a published version: waited for until it can be invoked, deleted once no execution
        # can invoke it (pipeline/aws/versions.py)
        _allow("FunctionVersions", ["lambda:GetFunctionConfiguration", "lambda:DeleteFunction"],
               [f"{arn}:*" for arn in functions]),
        _allow("StateMachine", [
            "states:DescribeStateMachine", "states:CreateStateMachine",
            "states:UpdateStateMachine", "states:DeleteStateMachine", "states:TagResource",
            "states:ListTagsForResource", "states:ListExecutions"], [names.state_machine_arn]),
        # the definitions the running executions started with: their versions are kept
        _allow("RunningExecutions", ["states:DescribeStateMachineForExecution"],
               [names.executions_arn]),
        _allow("Schedule", ["scheduler:GetSchedule", "scheduler:CreateSchedule",
                            "scheduler:UpdateSchedule", "scheduler:DeleteSchedule"],
               [schedule]),
    ]
    if data:
        statements += [
            # each data location's bucket must exist (HeadBucket)
            _allow("DataBuckets", ["s3:ListBucket"], sorted({d.bucket_arn(p) for d in data})),
            # an s3:// --schedule-manifest is read there
            _allow("ScheduleManifests", ["s3:GetObject"], [d.objects_arn(p) for d in data]),
        ]
    if kms_keys:  # (S3 decrypts an SSE-KMS schedule manifest for the deployer)
        statements.append(_allow("ReadEncryptedScheduleManifest", ["kms:Decrypt"],
                                 sorted(set(kms_keys)), _through_s3(names)))
    return _doc(*statements)


#: IAM's most characters of a policy, whitespace not counted: a managed policy's, and the
#: inline policies of one user's (IAM and AWS STS quotas)
MANAGED_POLICY_CHARS = 6144
USER_INLINE_CHARS = 2048


def policy_size(policy: dict[str, Any]) -> int:
    """The characters IAM counts of ``policy`` against its size quotas (no whitespace)."""
    return len(re.sub(r"\s", "", json.dumps(policy)))


def size_advice(policy: dict[str, Any], what: str) -> list[str]:
    """What to say of the size of ``policy`` (``what``: its name) against IAM's quotas: over
    a user's inline policies' 2,048 characters, to attach it as a managed policy; over a
    managed policy's 6,144, how to split it by statement into managed policies that fit (a
    ``jq`` command each), or, a statement being over it alone, which. Nothing at 2,048 or
    less."""
    size = policy_size(policy)
    if size <= USER_INLINE_CHARS:
        return []
    head = f"{what} is {size:,} characters (whitespace not counted)"
    if size <= MANAGED_POLICY_CHARS:
        return [(f"{head}: over IAM's {USER_INLINE_CHARS:,} for a user's inline policies, "
                 f"within {MANAGED_POLICY_CHARS:,} for a managed policy: create it as a "
                 "managed policy and attach it (or a role's inline policy, up to 10,240)")]
    statements = policy["Statement"]
    parts: list[list[int]] = []  # each part's statements, in order
    for i, statement in enumerate(statements):
        alone = policy_size(_doc(statement))
        if alone > MANAGED_POLICY_CHARS:
            return [(f"{head}, over IAM's {MANAGED_POLICY_CHARS:,} for a managed policy (and "
                     f"{USER_INLINE_CHARS:,} for a user's inline policies); its statement "
                     f"{statement.get('Sid', i)} alone is {alone:,}: give fewer locations or "
                     "keys (a bucket alone covers every prefix in it), or split them between "
                     "stacks")]
        if parts and policy_size(_doc(*(statements[j] for j in [*parts[-1], i]))) \
                <= MANAGED_POLICY_CHARS:
            parts[-1].append(i)
        else:
            parts.append([i])
    slices = [f"{part[0]}:{part[-1] + 1}" if part[-1] + 1 < len(statements) else
              f"{part[0]}:" for part in parts]
    return [(f"{head}, over IAM's {MANAGED_POLICY_CHARS:,} for a managed policy (and "
             f"{USER_INLINE_CHARS:,} for a user's inline policies): save it (> policy.json), "
             f"create these {len(parts)} managed policies from it, split by statement, and "
             "attach them all:"),
            *(f"  jq '{{Version, Statement: .Statement[{cut}]}}' policy.json > "
              f"policy-{k}.json" for k, cut in enumerate(slices, 1))]


def operator_policy(names: StackNames, data: list[DataLocation] | None = None,
                    inputs: list[DataLocation] | None = None,
                    kms_keys: list[str] | None = None) -> dict[str, Any]:
    """What a person (or a scheduler of theirs) running ``tiffpipe start`` and ``tiffpipe
    status`` on the stack ``names`` needs, and no more: ``start`` reads the state machine and
    its tags, the locations its functions' roles grant (``iam:GetRolePolicy``, optional: the
    check is said to be skipped without it), uploads a local manifest to ``manifests/`` (or
    reads one of ``data``/``inputs``, or of ``manifests/``) and starts an execution;
    ``status`` (and ``--wait``) reads the execution, its map runs' item counts, the report
    (``reports/``) or the work it rebuilds one from (``work/``), and, of a run that ended
    without its Report step, ends the uploads it left open: the outputs' (by their ids, in
    ``data``), its segments' under ``work/``, and removes their records. ``docs/aws.md``
    (Who may start and follow runs) prints it; ``tests/test_open_uploads.py`` records the
    calls start and status make and checks each is allowed here, on the resource it names.
    ``kms_keys``: the keys what it reads may be encrypted with (SSE-KMS), decrypted through
    S3 only: ``--sse-kms-key-id``'s (the run's report and the jobs' results, written by the
    functions as outputs are) and the ``--kms-key`` ones (a manifest in a data location)."""
    stack = names.bucket_arn
    p = names.partition
    data = _sorted(data or [DataLocation(names.bucket)])
    readable = _sorted(data + list(inputs or []))
    roles = [names.role_arn(names.function_role(s)) for s in ("split", "merge")]
    # what S3 decrypts for the caller: reports, results, manifests of SSE-KMS
    keys = [_allow("ReadEncrypted", ["kms:Decrypt"], sorted(set(kms_keys)),
                   _through_s3(names))] if kms_keys else []
    return _doc(
        # (ListExecutions: start refuses a list of jobs a running execution is running)
        _allow("StateMachine", ["states:DescribeStateMachine", "states:ListTagsForResource",
                                "states:StartExecution", "states:ListExecutions"],
               [names.state_machine_arn]),
        # the run and its Distributed Map children (the jobs' maps: progress)
        _allow("Executions", ["states:DescribeExecution", "states:ListMapRuns"],
               [names.executions_arn, child_executions_arn(names)]),
        # a map run's item counts; the Jobs map's running children (ListExecutions)
        _allow("MapRuns", ["states:DescribeMapRun", "states:ListExecutions"],
               [names.map_runs_arn]),
        # start checks a manifest's locations against those the functions may reach
        _allow("FunctionRoles", ["iam:GetRolePolicy"], roles),
        _allow("StackBucket", ["s3:ListBucket", "s3:ListBucketMultipartUploads"], [stack]),
        _allow("UploadManifests", ["s3:PutObject"], [f"{stack}/{MANIFESTS}*"]),
        _allow("ReadRuns", ["s3:GetObject"],
               [f"{stack}/{MANIFESTS}*", f"{stack}/{REPORTS}*", f"{stack}/{WORK}*"]),
        # a manifest already in S3, in a data or input location
        _allow("ReadManifests", ["s3:GetObject"], [d.objects_arn(p) for d in readable]),
        # status of a run that ended without its Report step: the uploads it left open
        _allow("EndOpenUploads", ["s3:AbortMultipartUpload"],
               [f"{stack}/{WORK}*", *(d.objects_arn(p) for d in data)]),
        _allow("ClearUploadRecords", ["s3:DeleteObject"], [f"{stack}/{UPLOAD_RECORDS}"]),
        *keys,
    )


#: the Sid of the bucket policy statement that refuses plain HTTP (deploy.py keeps it in the
#: stack bucket's policy; --print-bucket-policy prints it for a data bucket)
TLS_ONLY = "TiffpipeHttpsOnly"
#: ... and of those that refuse an object written without the outputs' encryption (--sse)
ENCRYPTED_ONLY, ONE_ENCRYPTION, ONE_KMS_KEY = (
    "TiffpipeEncryptedWritesOnly", "TiffpipeOneEncryption", "TiffpipeOneKmsKey")
#: the request headers of a write's encryption, as a bucket policy's condition keys
_SSE_HEADER = "s3:x-amz-server-side-encryption"
_SSE_KEY_HEADER = "s3:x-amz-server-side-encryption-aws-kms-key-id"


def _deny(sid: str, actions: str, resources: list[str], condition: dict[str, Any]
          ) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Deny", "Principal": "*", "Action": actions,
            "Resource": resources, "Condition": condition}


def bucket_policy(bucket: str, partition: str = "aws",
                  outputs: list[DataLocation] | None = None, sse: str | None = None,
                  sse_key: str | None = None) -> dict[str, Any]:
    """A bucket policy for ``bucket``: every request over plain HTTP is refused
    (``aws:SecureTransport`` false), whoever makes it: the functions, ``tiffpipe start`` and
    ``status``, Step Functions' ItemReader and deploy.py all use HTTPS. With ``sse``
    (``deploy.py --sse``: AES256 or aws:kms, the header every write of an output or report
    carries), an object written under the ``outputs`` locations (the whole bucket: none)
    without that header, or with another value, or (``sse_key``) with another KMS key, is
    refused too. deploy.py keeps the first statement in the stack bucket's policy
    (:func:`merged_bucket_policy`); ``deploy.py --print-bucket-policy`` prints them for a
    data bucket, which is the user's."""
    arn = f"arn:{partition}:s3:::{bucket}"
    statements = [_deny(TLS_ONLY, "s3:*", [arn, f"{arn}/*"],
                        {"Bool": {"aws:SecureTransport": "false"}})]
    if sse and sse != "none":
        objects = [d.objects_arn(partition) for d in _sorted(outputs or [])] or [f"{arn}/*"]
        statements += [
            _deny(ENCRYPTED_ONLY, "s3:PutObject", objects, {"Null": {_SSE_HEADER: "true"}}),
            _deny(ONE_ENCRYPTION, "s3:PutObject", objects,
                  {"StringNotEquals": {_SSE_HEADER: sse}}),
        ]
        if sse_key:
            statements.append(_deny(ONE_KMS_KEY, "s3:PutObject", objects,
                                    {"StringNotEquals": {_SSE_KEY_HEADER: sse_key}}))
    return _doc(*statements)


def statements_in(policy: dict[str, Any] | None, ours: list[dict[str, Any]]
                  ) -> list[dict[str, Any] | None]:
    """The statements of a bucket's ``policy`` (None: it has none) that have the Sids of
    ``ours``, in their order (None for one it lacks)."""
    found = {s.get("Sid"): s for s in _bucket_statements(policy)}
    return [found.get(s["Sid"]) for s in ours]


def _bucket_statements(policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    statements = (policy or {}).get("Statement", [])
    return [s for s in ([statements] if isinstance(statements, dict) else statements)
            if isinstance(s, dict)]


def merged_bucket_policy(policy: dict[str, Any] | None, ours: list[dict[str, Any]]
                         ) -> dict[str, Any]:
    """A bucket's ``policy`` (None: it has none) with the statements ``ours`` put in, in
    place of its statements of the same Sids: every other statement (the bucket owner's own)
    is kept as it is."""
    sids = {s["Sid"] for s in ours}
    kept = [s for s in _bucket_statements(policy) if s.get("Sid") not in sids]
    return {**(policy or {"Version": VERSION}), "Statement": kept + list(ours)}
