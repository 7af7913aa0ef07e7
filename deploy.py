#!/usr/bin/env python3
"""Deploy tiffpipe to AWS: three Lambda images, their functions and roles, the state machine,
a bucket and (optionally) a schedule, all under one stack name. Re-runnable: a second run
with nothing changed changes nothing and says so. The state machine names the versions of
the functions each deploy publishes, so a run goes on to its end on the release it started
on; --rollback points it back at the previous release's.

    python deploy.py [--stack NAME] [--region R] [--profile P] [--arch arm64|amd64]
                     [--schedule "cron(...)"|"rate(...)" --schedule-manifest URI]
                     [--data-bucket BUCKET[/PREFIX] ...] [--input-bucket BUCKET[/PREFIX] ...]
                     [--no-input-buckets] [--kms-key KEY-ARN ... | --no-kms-keys]
                     [--sse AES256|aws:kms|none [--sse-kms-key-id KEY-ARN]]
                     [--concurrency N] [--dry-run] [--skip-build] [--print-deployer-policy]
                     [--print-operator-policy] [--print-bucket-policy BUCKET]
                     [--destroy [--delete-bucket] | --rollback | --break-lock]
                     [--endpoint-url URL]
                     [--registry HOST/PREFIX]
                     [--base-image IMAGE] [--build-arg KEY[=VALUE] ...]
                     [--requirements FILE] [--package PATH ... | --no-packages]

Progress goes to stderr, the resulting names and ARNs to stdout as JSON. Exit codes: 0 done,
1 a step failed (rerun to resume), a data location's bucket does not exist (create it),
--rollback has nothing to go back to, --destroy finds no stack in the region, or another
deploy.py holds the stack's deploy lock, 2 usage (no region, or one AWS has not), the
stack's IAM roles belonging to its deployment in another region (IAM is global), a
resource of the stack's names it did not make (no tiffpipe:stack tag: another's), a
schedule manifest that is missing, invalid, outside the data locations or of jobs that
leave if_exists unset, or a build that would drop the packages of yours the deployed
process function has; 130 stopped by Ctrl-C
(143 by SIGTERM, 129 by its terminal's hang-up), the deploy lock released.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.aws import (
    AwsError,
    Clients,
    DeployUsageError,
    NoCredentialsFoundError,
    StackNames,
    check_endpoint_url,
    check_region,
    check_schedule,
    check_stack_name,
)
from pipeline.aws.actions import call_failed
from pipeline.aws.deploy_steps import DeployConfig, deploy, destroy, rollback, unlock
from pipeline.aws.images import check_user_packages
from pipeline.aws.policies import (
    DataLocation,
    bucket_policy,
    deployer_policy,
    operator_policy,
    parse_kms_key,
    size_advice,
)
from pipeline.errors import EngineError, InputNotFoundError, ManifestError, TiffpipeError
from pipeline.ui import exit_code_of, on_stop_signals

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: + the signal that stopped deploy.py (130 Ctrl-C, 143 SIGTERM), as tiffpipe's
EXIT_SIGNALLED = 128


#: what --requirements and --package each say of when to give them
_GIVE_AT_EVERY_BUILD = ("give it at every deploy that builds (the process function records it: "
                        "a build without it is refused)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--stack", default="main",
                   help="stack name: part of every resource name (default: main)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or "
                                    "the profile's)")
    p.add_argument("--profile", help="AWS profile (default: the standard credential chain)")
    p.add_argument("--arch", choices=("arm64", "amd64"), default="arm64",
                   help="image and Lambda architecture (default: arm64, ~20%% cheaper)")
    p.add_argument("--data-bucket", action="append", default=[], metavar="BUCKET[/PREFIX]",
                   help="a bucket (or prefix) the functions may read inputs from and write "
                        "outputs to; repeatable, replaces the deployed ones (default: those "
                        "the deployed stack has; for a new stack, its own bucket)")
    p.add_argument("--input-bucket", action="append", default=None, metavar="BUCKET[/PREFIX]",
                   help="a bucket (or prefix) the functions may only read inputs from (your "
                        "originals: no output can replace them); repeatable, replaces the "
                        "deployed ones (default: those the deployed stack has)")
    p.add_argument("--no-input-buckets", action="store_true",
                   help="remove the read-only input locations")
    p.add_argument("--kms-key", action="append", default=None, metavar="KEY-ARN",
                   help="a KMS key the data locations' objects are encrypted with (SSE-KMS): "
                        "the functions may use it through S3; repeatable, replaces the "
                        "deployed ones (default: those the deployed stack has)")
    p.add_argument("--no-kms-keys", action="store_true", help="remove the KMS keys")
    p.add_argument("--sse", choices=("AES256", "aws:kms", "none"),
                   help="server-side encryption the functions ask for on every output they "
                        "write (a bucket policy may deny writes without it); none: the "
                        "bucket's default (default: the deployed stack's; for a new stack, "
                        "none)")
    p.add_argument("--sse-kms-key-id", metavar="KEY-ARN",
                   help="with --sse aws:kms: the KMS key outputs are encrypted with (granted "
                        "to the functions as --kms-key; default: S3's aws/s3 key)")
    p.add_argument("--schedule", metavar="EXPR",
                   help='run on a schedule: "cron(0 2 * * ? *)" or "rate(1 day)" (UTC)')
    p.add_argument("--schedule-manifest", metavar="URI",
                   help="the manifest each scheduled run uses (s3://..., or a local file "
                        "uploaded to the stack bucket); a scan manifest for batch runs (a "
                        "manifest of jobs must set their if_exists: each run does them again)")
    p.add_argument("--no-schedule", action="store_true", help="remove the schedule")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="the most Lambda invocations one run makes at once, shared out "
                        "between its jobs (default: the deployed stack's; for a new stack, "
                        "the account's unreserved Lambda concurrency)")
    p.add_argument("--print-deployer-policy", action="store_true",
                   help="print the IAM policy the identity running deploy.py needs for this "
                        "stack and its data locations (JSON; with an s3:// "
                        "--schedule-manifest, give the deploy's --kms-key and "
                        "--sse-kms-key-id); change nothing")
    p.add_argument("--print-operator-policy", action="store_true",
                   help="print the IAM policy the identity running tiffpipe start and status "
                        "on this stack needs (JSON; give the deploy's --data-bucket, "
                        "--input-bucket, --kms-key and --sse-kms-key-id); change nothing")
    p.add_argument("--print-bucket-policy", metavar="BUCKET",
                   help="print a bucket policy for BUCKET, a data bucket of yours: requests "
                        "over plain HTTP refused and, with --sse, writes under its "
                        "--data-bucket locations without that encryption (JSON); change "
                        "nothing (deploy sets the stack bucket's itself)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every action it would take; change nothing")
    p.add_argument("--skip-build", action="store_true",
                   help="no docker: deploy the images built for --arch that were pushed last "
                        "to the stack's ECR repositories")
    p.add_argument("--destroy", action="store_true",
                   help="remove everything deploy made, only that (a resource of the stack's "
                        "names without its tiffpipe:stack tag is left); refused while a run "
                        "goes on")
    p.add_argument("--rollback", action="store_true",
                   help="point the state machine back at the definition the last deploy "
                        "replaced (the previous release's function versions), without a "
                        "build; running executions keep theirs; again: forward again")
    p.add_argument("--break-lock", action="store_true",
                   help="only remove the stack's deploy lock (it deploys nothing), left by a "
                        "deploy known to be dead (its machine lost, its process killed): the "
                        "lock read now only; then run the deploy again")
    p.add_argument("--delete-bucket", action="store_true",
                   help="with --destroy: also empty and delete the bucket")
    p.add_argument("--endpoint-url", help="send every AWS call there (emulators, tests)")
    p.add_argument("--registry", metavar="HOST/PREFIX",
                   help="push the images to this registry instead of ECR (no ECR repositories)")
    p.add_argument("--base-image", help="BASE_IMAGE build argument of the Dockerfiles")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]",
                   help="a build argument of the three docker builds, e.g. PIP_INDEX_URL=URL "
                        "of a pip mirror (KEY alone: its value from this environment, as "
                        "docker build takes it); repeatable")
    p.add_argument("--requirements", metavar="FILE",
                   help="a pip requirements file of your own packages (custom ops) to install "
                        f"in the process image; {_GIVE_AT_EVERY_BUILD}")
    p.add_argument("--package", action="append", default=[], metavar="PATH",
                   help="a package of your own (a wheel, or a project folder) to install in "
                        f"the process image; repeatable; {_GIVE_AT_EVERY_BUILD}")
    p.add_argument("--no-packages", action="store_true",
                   help="build the process image without your packages, though the deployed "
                        "one has some (a build without --package/--requirements is refused "
                        "then)")
    return p


def _build_options(args: argparse.Namespace) -> list[str]:
    """The --build-arg values, checked, and --requirements and --package checked
    (ValueError: usage)."""
    for arg in args.build_arg:
        key = arg.partition("=")[0]
        if not key.isidentifier():
            raise ValueError(f"--build-arg {arg!r}: expected KEY=VALUE or KEY (the value "
                             "from this environment)")
        if key == "BASE_IMAGE":
            raise ValueError("--build-arg BASE_IMAGE: give --base-image instead")
    given = [name for name, value in (("--build-arg", args.build_arg),
                                      ("--requirements", args.requirements),
                                      ("--package", args.package),
                                      ("--no-packages", args.no_packages)) if value]
    if given and (args.skip_build or args.destroy):
        raise ValueError(f"{given[0]} goes with a build: leave out "
                         f"{'--skip-build' if args.skip_build else '--destroy'}")
    if args.no_packages and (args.package or args.requirements):
        raise ValueError(f"--no-packages and {'--package' if args.package else '--requirements'}"
                         " contradict each other")
    check_user_packages(args.requirements, args.package)
    return list(args.build_arg)


def _print_bucket_policy(names: StackNames, bucket: str, data: list[DataLocation],
                         sse: str | None, sse_key: str | None) -> None:
    """--print-bucket-policy: the policy on stdout, how to apply it on stderr."""
    own = bucket == names.bucket
    if own:
        print(f"deploy.py: {bucket} is the stack's own bucket: deploy puts the HTTPS-only "
              "statement in its policy itself"
              + ("; no encryption statement for it: its work files are written without the "
                 "header (PlanRun's)" if sse and sse != "none" else ""), file=sys.stderr)
    outputs = [d for d in data if d.bucket == bucket]
    if data and not outputs and not own and sse and sse != "none":
        print(f"deploy.py: {bucket} holds none of the --data-bucket locations "
              f"({', '.join(str(d) for d in data)}): the functions write no output there, so "
              "no encryption statement (its owner's own writes left as they are); only plain "
              "HTTP is refused", file=sys.stderr)
        sse = None
    policy = bucket_policy(bucket, names.partition, outputs, None if own else sse, sse_key)
    print(json.dumps(policy, indent=2))
    print(f"deploy.py: apply it with aws s3api put-bucket-policy --bucket {bucket} --policy "
          "file://policy.json (this output saved there), which replaces the bucket's policy: "
          "if it has one (aws s3api get-bucket-policy), add these statements to it instead",
          file=sys.stderr)


def _given_beyond_the_stack(args: argparse.Namespace) -> list[str]:
    """The options given beyond those naming the stack and how to reach it, and --dry-run:
    what --rollback (which changes only the state machine) and --break-lock refuse."""
    return [option for option, value in (
        ("--rollback", args.rollback), ("--break-lock", args.break_lock),
        ("--destroy", args.destroy), ("--data-bucket", args.data_bucket),
        ("--input-bucket", args.input_bucket is not None),
        ("--no-input-buckets", args.no_input_buckets), ("--kms-key", args.kms_key is not None),
        ("--no-kms-keys", args.no_kms_keys), ("--sse", args.sse),
        ("--sse-kms-key-id", args.sse_kms_key_id), ("--schedule", args.schedule),
        ("--schedule-manifest", args.schedule_manifest), ("--no-schedule", args.no_schedule),
        ("--concurrency", args.concurrency is not None), ("--skip-build", args.skip_build),
        ("--registry", args.registry), ("--base-image", args.base_image),
        ("--build-arg", args.build_arg), ("--requirements", args.requirements),
        ("--package", args.package), ("--no-packages", args.no_packages),
        ("--print-deployer-policy", args.print_deployer_policy),
        ("--print-operator-policy", args.print_operator_policy),
        ("--print-bucket-policy", args.print_bucket_policy)) if value]


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The options given, as the deploy lock records them (who holds it doing what): each
    that differs from its default, a --build-arg by its key only (a value may be a token),
    an --endpoint-url without a user and password in it."""
    words = []
    for dest, value in vars(args).items():
        if value in (None, False, []) or value == parser.get_default(dest):
            continue
        option = "--" + dest.replace("_", "-")
        if dest == "build_arg":
            value = [arg.partition("=")[0] for arg in value]
        elif dest == "endpoint_url":  # (a user:password@ in it is a secret too)
            parts = urllib.parse.urlsplit(value)
            value = parts._replace(netloc=parts.hostname + (
                f":{parts.port}" if parts.port else "")).geturl() if parts.hostname else value
        for one in value if isinstance(value, list) else [value]:
            words += [option] if one is True else [option, str(one)]
    return shlex.join(words)


class _Stopped(BaseException):
    """A signal stopped deploy.py (raised by its handler, so that every ``finally`` runs:
    the deploy lock is released)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP, unless ignored when deploy.py started
    (:func:`pipeline.ui.stop_signals`), raise :class:`_Stopped` while the block runs: a
    SIGTERM would otherwise end the process at once, its deploy lock left held. Once: a
    second signal while the first unwinds (Ctrl-C pressed twice, a CI's SIGTERM sent again)
    is let go, so that the lock's release runs to its end. Only in the main thread (where
    Python runs signal handlers)."""
    stopped: list[int] = []

    def handler(signum: int, _: Any) -> None:
        if not stopped:
            stopped.append(signum)
            raise _Stopped(signum)

    with on_stop_signals(handler):
        yield


def _check_definition() -> None:
    """The state machine definition a deploy renders (statemachine.asl.json, edited in a
    fork) checked as ``tiffpipe validate --definition`` checks it: its structure, paths and
    fields, and its contract with the code the images run. Step Functions' CreateStateMachine
    checks the structure only: a definition that drops a field a step reads deployed, and
    failed every job of every run (EngineError: a usage error, before any AWS call)."""
    from pipeline.engine import definition

    definition.check(definition.definition_text(), definition.definition_path(),
                     contract=True)


def _run(args: argparse.Namespace, config: DeployConfig, clients: Clients,
         data: list[DataLocation], inputs: list[DataLocation] | None,
         kms_keys: list[str] | None, sse_key: str | None, policy_bucket: DataLocation | None,
         hooks: dict[str, Any]) -> dict[str, Any] | None:
    """What deploy.py was asked to do: the result to print as JSON (None: a policy printed)."""
    if args.print_deployer_policy:  # (the account: GetCallerIdentity needs no permission)
        names = clients.names(args.stack)
        located = [*(data or [DataLocation(names.bucket)]), *(inputs or [])]
        # an s3:// schedule manifest is read at deploy time: S3 decrypts it for the caller
        read_keys = ([*(kms_keys or []), *([sse_key] if sse_key else [])]
                     if (args.schedule_manifest or "").startswith("s3://") else [])
        policy = deployer_policy(names, located, read_keys)
        print(json.dumps(policy, indent=2), flush=True)
        for line in size_advice(policy, "the deployer policy"):  # (after it: its reader's)
            print(f"deploy.py: {line}" if not line.startswith(" ") else line, file=sys.stderr)
        return None
    if args.print_operator_policy:
        names = clients.names(args.stack)
        keys = [*(kms_keys or []), *([sse_key] if sse_key else [])]
        print(json.dumps(operator_policy(names, data, inputs, keys), indent=2))
        return None
    if policy_bucket:
        _print_bucket_policy(clients.names(args.stack), policy_bucket.bucket, data,
                             args.sse, sse_key or None)
        return None
    if args.destroy:
        return destroy(config, clients, delete_bucket=args.delete_bucket)
    if args.rollback:
        return rollback(config, clients)
    if args.break_lock:
        return unlock(config, clients)
    return deploy(config, clients, **hooks)


def main(argv: list[str] | None = None, session: Any = None, **hooks: Any) -> int:
    """``hooks`` (``build``, ``run``, ``sleep``) replace docker and waiting in tests."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.delete_bucket and not args.destroy:
        print("deploy.py: --delete-bucket goes with --destroy", file=sys.stderr)
        return EXIT_USAGE
    for alone, given, what in (
            ("--rollback", args.rollback, ("changes only the state machine (back to the "
                                           "previous release's definition and function "
                                           "versions)")),
            ("--break-lock", args.break_lock, "only removes the stack's deploy lock")):
        if given:
            others = [o for o in _given_beyond_the_stack(args) if o != alone]
            if others:
                print(f"deploy.py: {alone} {what}: leave out {others[0]}", file=sys.stderr)
                return EXIT_USAGE
    if args.no_schedule and args.schedule:
        print("deploy.py: --schedule and --no-schedule contradict each other", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = [DataLocation.parse(d) for d in args.data_bucket]
        inputs = ([] if args.no_input_buckets else
                  None if args.input_bucket is None else
                  [DataLocation.parse(d, "--input-bucket") for d in args.input_bucket])
        if args.no_input_buckets and args.input_bucket:
            raise ValueError("--input-bucket and --no-input-buckets contradict each other")
        if args.no_kms_keys and args.kms_key:
            raise ValueError("--kms-key and --no-kms-keys contradict each other")
        kms_keys = ([] if args.no_kms_keys else None if args.kms_key is None else
                    [parse_kms_key(k) for k in args.kms_key])
        if args.sse_kms_key_id and args.sse != "aws:kms":
            raise ValueError("--sse-kms-key-id goes with --sse aws:kms")
        sse_key = args.sse_kms_key_id and parse_kms_key(args.sse_kms_key_id,
                                                             "--sse-kms-key-id")
        printing = [option for option, given in (
            ("--print-deployer-policy", args.print_deployer_policy),
            ("--print-operator-policy", args.print_operator_policy),
            ("--print-bucket-policy", args.print_bucket_policy)) if given]
        if len(printing) > 1:
            raise ValueError(f"{' and '.join(printing)}: give one at a time (each prints one "
                             "JSON document)")
        policy_bucket = args.print_bucket_policy and DataLocation.parse(
            args.print_bucket_policy, "--print-bucket-policy")
        if policy_bucket and policy_bucket.prefix:
            raise ValueError(f"--print-bucket-policy {args.print_bucket_policy}: give the "
                             "bucket alone (the --data-bucket locations in it say where "
                             "outputs are written)")
        if args.concurrency is not None and args.concurrency < 1:
            raise ValueError(f"--concurrency {args.concurrency}: expected at least 1")
        build_args = _build_options(args)
        check_stack_name(args.stack)
        check_endpoint_url(args.endpoint_url)
        if not args.destroy:
            check_schedule(args.schedule, args.schedule_manifest)
        if not (args.destroy or args.rollback or args.break_lock or args.print_deployer_policy
                or args.print_operator_policy or args.print_bucket_policy):
            _check_definition()
    except (ValueError, AwsError, EngineError) as exc:  # usage: nothing was asked of AWS
        print(f"deploy.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = DeployConfig(
        stack=args.stack, arch=args.arch, data=data, inputs=inputs, schedule=args.schedule,
        schedule_manifest=args.schedule_manifest, remove_schedule=args.no_schedule,
        skip_build=args.skip_build, registry=args.registry, base_image=args.base_image,
        dry_run=args.dry_run, concurrency=args.concurrency, kms_keys=kms_keys,
        build_args=build_args, requirements=args.requirements, packages=args.package,
        no_packages=args.no_packages, sse=args.sse, sse_kms_key=sse_key or None,
        command=_command(parser, args))
    clients = Clients(args.region, args.profile, args.endpoint_url, session)
    try:  # (no AWS call: the option, the environment or the profile's)
        warning = check_region(clients.region, args.endpoint_url)
    except NoCredentialsFoundError as exc:  # (--profile not found)
        print(f"deploy.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except AwsError as exc:  # no region, or none AWS has: usage
        print(f"deploy.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if warning:
        print(f"deploy.py: WARNING: {warning}", file=sys.stderr)
    try:
        with _stopped_by_signals():
            result = _run(args, config, clients, data, inputs, kms_keys, sse_key, policy_bucket,
                          hooks)
    except _Stopped as stop:
        print(f"deploy.py: stopped by {signal.Signals(stop.signum).name}: run it again to "
              "finish (every step is re-runnable and resumes where this one stopped)",
              file=sys.stderr)
        return EXIT_SIGNALLED + stop.signum
    except KeyboardInterrupt:  # (SIGINT where the handler is not this module's)
        print("deploy.py: interrupted: run it again to finish", file=sys.stderr)
        return EXIT_SIGNALLED + signal.SIGINT
    except DeployUsageError as exc:
        print(f"deploy.py: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as exc:
        print(f"deploy.py: invalid schedule manifest {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InputNotFoundError as exc:  # (the schedule manifest: the one input deploy reads)
        print(f"deploy.py: --schedule-manifest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (AwsError, TiffpipeError) as exc:
        print(f"deploy.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ClientError, BotoCoreError) as exc:
        failed = call_failed(exc) if isinstance(exc, ClientError) else f"an AWS call failed: {exc}"
        print(f"deploy.py: {failed}\n" + (
            "Fix the cause and run it again (a dry run: nothing was changed)" if args.dry_run
            else "Fix the cause and run deploy.py again: every step is re-runnable and "
                 "resumes where this one stopped"), file=sys.stderr)
        return EXIT_FAILED
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


if __name__ == "__main__":  # (quiet when stdout's reader has gone: `... | head -3`)
    sys.exit(exit_code_of(main))
