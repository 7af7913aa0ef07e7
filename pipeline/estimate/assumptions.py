"""Every number of the estimate that is not measured: prices, function sizes, Lambda against
the benchmark machine. Printed with the estimate; ``--price KEY=VALUE`` overrides any."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.constants import FUNCTION_SIZES


class EstimateError(ValueError):
    """A calibration file, an override or an --assume-pages spec that cannot be used."""


@dataclass(frozen=True)
class Assumption:
    value: float
    unit: str
    help: str


#: every number the estimate uses that is not measured; ``--price KEY=VALUE`` overrides any
ASSUMPTIONS: dict[str, Assumption] = {
    # list prices, us-east-1 (check https://aws.amazon.com/lambda/pricing/ and friends)
    "lambda_gb_s": Assumption(0.0000133334, "USD/GB-s",
                              "Lambda arm64 duration (first 7.5 billion GB-s a month)"),
    "lambda_request": Assumption(0.20 / 1e6, "USD/request", "Lambda requests"),
    "lambda_ephemeral_gb_s": Assumption(0.0000000309, "USD/GB-s",
                                        "Lambda /tmp above the free 512 MB"),
    "sfn_transition": Assumption(0.025 / 1000, "USD/transition",
                                 "Step Functions Standard state transitions"),
    "s3_put": Assumption(0.005 / 1000, "USD/request", "S3 PUT, COPY, POST and LIST requests"),
    "s3_get": Assumption(0.0004 / 1000, "USD/request", "S3 GET, HEAD and other requests"),
    "s3_gb_month": Assumption(0.023, "USD/GB-month", "S3 Standard storage (first 50 TB)"),
    # how deploy sizes the functions (pipeline/core/constants.py FUNCTION_SIZES)
    "memory_split_mb": Assumption(FUNCTION_SIZES["split"].memory, "MB",
                                  "memory of the split function"),
    "memory_process_mb": Assumption(FUNCTION_SIZES["process"].memory, "MB",
                                    "memory of the process function"),
    "memory_merge_mb": Assumption(FUNCTION_SIZES["merge"].memory, "MB",
                                  "memory of the merge function"),
    "ephemeral_split_mb": Assumption(FUNCTION_SIZES["split"].ephemeral, "MB",
                                     "/tmp of the split function"),
    "ephemeral_process_mb": Assumption(FUNCTION_SIZES["process"].ephemeral, "MB",
                                       "/tmp of the process function"),
    "ephemeral_merge_mb": Assumption(FUNCTION_SIZES["merge"].ephemeral, "MB",
                                     "/tmp of the merge function (as deployed; "
                                     "merge no longer uses it)"),
    "timeout_s": Assumption(min(s.timeout for s in FUNCTION_SIZES.values()), "s",
                            "Lambda timeout of every function"),
    "work_retention_days": Assumption(7, "days", "work files kept until the lifecycle rule "
                                                 "removes them"),
    # Lambda's machine against the benchmark's
    "mb_per_vcpu": Assumption(1769, "MB", "Lambda memory per vCPU"),
    "lambda_core_speed": Assumption(1.0, "x", "a Lambda vCPU's speed against one core of "
                                              "the calibration machine"),
    "s3_mb_per_s": Assumption(90, "MB/s", "S3 throughput of one invocation (GET and PUT), "
                                          "not overlapped with compute"),
    "s3_copy_mb_per_s": Assumption(100, "MB/s", "S3 server-side copy throughput of one "
                                                "UploadPartCopy request"),
    "cold_start_s": Assumption(1.5, "s", "container cold start before the handler's imports "
                                         "(the measured import time is added)"),
    "state_latency_s": Assumption(0.1, "s", "Step Functions latency per state on a job's "
                                            "path (a Distributed Map run's start included)"),
}


def assumptions_with(overrides: dict[str, float] | None) -> dict[str, float]:
    values = {k: a.value for k, a in ASSUMPTIONS.items()}
    for key, value in (overrides or {}).items():
        if key not in ASSUMPTIONS:
            raise EstimateError(f"unknown assumption {key!r}; known: {', '.join(ASSUMPTIONS)}")
        values[key] = float(value)
    return values


def parse_overrides(items: list[str] | None) -> dict[str, float]:
    """``["KEY=VALUE", ...]`` (``--price``) as numbers; unknown keys are an error."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise EstimateError(f"--price {item!r}: expected KEY=VALUE")
        try:
            out[key] = float(value)
        except ValueError:
            raise EstimateError(f"--price {item!r}: {value!r} is not a number") from None
    assumptions_with(out)  # unknown keys
    return out
