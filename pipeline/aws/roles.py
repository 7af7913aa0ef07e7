"""A stack's IAM roles are global, where everything else of it is per region: their names
(``tiffpipe-STACK-split-fn``, ``-states``, ``-scheduler``...) carry the stack name only, so
one stack name deployed in two regions would share them, each deploy rewriting their
policies for its own region's resources (the other's functions losing their bucket, logs
and data locations), and a ``--destroy`` in one region deleting the other's roles.

So the roles record the region they belong to (:data:`~pipeline.aws.REGION_TAG`, set at
create and by every deploy in that region); a role made before the tag has the region of
the stack's own regional resources (functions, log groups, state machine) its policy
names. :func:`refuse_other_region` stops a deploy, ``--rollback`` or ``--destroy`` in
another region before any change; :func:`refuse_no_stack` a ``--destroy`` of a stack with
nothing in the region.

The data locations, which the function roles' policies hold, are recorded in the stack
bucket too (:data:`LOCATIONS_KEY`, by every deploy): roles deleted under a stack take them
with them otherwise, and a redeploy would recreate the roles granting the stack bucket only.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.aws import (
    REGION_TAG,
    STEPS,
    Clients,
    DeployUsageError,
    StackNames,
    StackNotFoundError,
    parse_arn,
    policies,
)
from pipeline.aws.actions import Actions, get_or_none
from pipeline.aws.resources import role_policy

#: the data locations (and KMS keys) of the last deploy, in the stack bucket
LOCATIONS_KEY = "deploys/locations.json"
#: the services whose ARNs in a role's policy name the stack's region
_REGIONAL = ("lambda", "logs", "states")
#: what a --destroy or --rollback in the wrong region would do to the stack the roles serve
_WOULD = {
    "deploy": ("this deploy would rewrite their policies for {here}'s resources: the "
               "functions in {there} would lose their bucket, logs and data locations. To "
               "deploy a stack in {here}, give it another --stack name; to move stack "
               "{stack!r} here, destroy it in its region first (deploy.py --stack {stack} "
               "--region {there} --destroy); to redeploy it, give --region {there}"),
    "rollback": ("a --rollback works on the stack in its region: give --region {there} (or "
                 "another --stack name for a stack of {here})"),
    "destroy": ("this --destroy would delete them under the functions in {there}. Destroy "
                "the stack in its region: deploy.py --stack {stack} --region {there} "
                "--destroy"),
}


def policy_region(policy: dict[str, Any], names: StackNames) -> str | None:
    """The region of the stack's own regional resources (functions, log groups, state
    machine) a role's policy names: where a role made before :data:`REGION_TAG` belongs
    (None: it names none; a KMS key's region is not the stack's)."""
    for statement in policy.get("Statement", []):
        resources = statement.get("Resource", [])
        for arn in [resources] if isinstance(resources, str) else resources:
            try:
                parts = parse_arn(arn)
            except ValueError:
                continue
            if (parts["service"] in _REGIONAL and parts["region"]
                    and names.prefix in parts["resource"]):
                return parts["region"]
    return None


def role_regions(iam: Any, names: StackNames) -> dict[str, str | None]:
    """Each role of the stack that exists, and the region it belongs to: its tag's, else
    its policy's (None: neither says)."""
    found: dict[str, str | None] = {}
    for role in names.roles:
        current = get_or_none(lambda r=role: iam.get_role(RoleName=r)["Role"], "NoSuchEntity")
        if current is None:
            continue
        tags = {t["Key"]: t["Value"] for t in current.get("Tags", [])}
        found[role] = tags.get(REGION_TAG) or policy_region(role_policy(iam, role) or {}, names)
    return found


def refuse_other_region(clients: Clients, names: StackNames, what: str
                        ) -> dict[str, str | None]:
    """The stack's roles and their regions (:func:`role_regions`); a DeployUsageError,
    before any change, when one belongs to another region than ``names``' (``what``:
    deploy, rollback or destroy, what the message says it would do there)."""
    regions = role_regions(clients("iam"), names)
    elsewhere = {role: r for role, r in regions.items() if r and r != names.region}
    if not elsewhere:
        return regions
    there = min(r for r in elsewhere.values() if r)
    roles = ", ".join(role for role, r in elsewhere.items() if r == there)
    raise DeployUsageError(
        f"stack {names.stack!r} is deployed in {there}: its IAM roles ({roles}) belong to it "
        f"(IAM is global: the role names carry the stack name only), and this is "
        f"{names.region}: "
        + _WOULD[what].format(here=names.region, there=there, stack=names.stack)
        + "; nothing was changed")


def refuse_no_stack(clients: Clients, names: StackNames, regions: dict[str, str | None]
                    ) -> None:
    """A StackNotFoundError, before any change, when the stack has nothing in the region:
    no bucket, no state machine, no function, and no role of its (``regions``, from
    :func:`refuse_other_region`: a role whose region is not known is taken as this one's)."""
    if regions:
        return
    s3, sfn, lam = clients("s3"), clients("stepfunctions"), clients("lambda")
    if get_or_none(lambda: s3.head_bucket(Bucket=names.bucket), "404", "NoSuchBucket",
                   "NotFound") is not None:
        return
    if get_or_none(lambda: sfn.describe_state_machine(stateMachineArn=names.state_machine_arn),
                   "StateMachineDoesNotExist") is not None:
        return
    for step in STEPS:
        if get_or_none(lambda s=step: lam.get_function(FunctionName=names.function(s)),
                       "ResourceNotFoundException") is not None:
            return
    raise StackNotFoundError(
        f"no stack {names.stack!r} in {names.region}: check --stack and --region (no bucket "
        f"{names.bucket}, no state machine {names.state_machine}, no function and no role of "
        "it there); nothing was changed")


# --- the record of the data locations ----------------------------------------------------------


Locations = tuple[list[policies.DataLocation], list[policies.DataLocation], list[str]]


def _record(data: list[policies.DataLocation], inputs: list[policies.DataLocation],
            kms_keys: list[str]) -> dict[str, list[str]]:
    return {"data": [str(d) for d in data], "inputs": [str(d) for d in inputs],
            "kms_keys": list(kms_keys)}


def _read_record(s3: Any, names: StackNames) -> Any:
    body = get_or_none(lambda: s3.get_object(Bucket=names.bucket, Key=LOCATIONS_KEY)["Body"],
                       "NoSuchKey", "NoSuchBucket", "404")
    if body is None:
        return None
    try:
        return json.loads(body.read().decode("utf-8"))
    except ValueError:
        return None


def recorded_locations(s3: Any, names: StackNames) -> Locations | None:
    """The read-write and read-only data locations and KMS keys the last deploy recorded
    (None: no record, or one this tiffpipe cannot read)."""
    record = _read_record(s3, names)
    try:
        return ([policies.DataLocation.parse(d) for d in record["data"]],
                [policies.DataLocation.parse(d, "--input-bucket") for d in record["inputs"]],
                [policies.parse_kms_key(k) for k in record["kms_keys"]])
    except (KeyError, TypeError, ValueError):
        return None


def record_locations(s3: Any, names: StackNames, locations: Locations, acts: Actions) -> None:
    """Record the deploy's data locations in the stack bucket, when they differ from those
    recorded."""
    record = _record(*locations)
    if _read_record(s3, names) == record:
        return
    acts.heading(f"bucket {names.bucket}")
    acts.change(f"record the data locations in s3://{names.bucket}/{LOCATIONS_KEY} (read "
                "back if the stack's roles are lost)",
                lambda: s3.put_object(Bucket=names.bucket, Key=LOCATIONS_KEY,
                                      Body=json.dumps(record, indent=2).encode("utf-8"),
                                      ContentType="application/json"))


def forget_locations(s3: Any, names: StackNames, acts: Actions) -> None:
    """Delete the record (a destroy that keeps the bucket: the data locations of a stack
    gone are no redeploy's)."""
    if _read_record(s3, names) is not None:
        acts.change(f"delete s3://{names.bucket}/{LOCATIONS_KEY} (the record of the data "
                    "locations)", lambda: s3.delete_object(Bucket=names.bucket,
                                                           Key=LOCATIONS_KEY))
