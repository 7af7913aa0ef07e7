"""How many jobs, and items of one job's maps, a run on AWS runs at once.

A run's ``Jobs`` map runs jobs side by side, and each job fans its units or batches out in
maps of its own, one map after another: a run makes at most ``jobs_at_once x per_job``
Lambda invocations at once. ``deploy.py --concurrency N`` (default: the account's
unreserved Lambda concurrency) puts ``N`` in PlanRun's payload; PlanRun, knowing how many
jobs the run has, shares ``N`` out (:func:`share`), and the maps read their limits from the
state data (``MaxConcurrencyPath``). So a run of one giant job may use all of ``N``, and a
batch of many jobs never asks for more than ``N`` together: invocations beyond the
account's concurrency are throttled, retried for minutes, and then fail their job.
"""

from __future__ import annotations

#: jobs of a run side by side, at most (each job's Merge, PlanJob, small ProcessJob: one
#: invocation; its maps: up to ``per_job``)
JOBS_AT_ONCE = 8
#: items of one job's map at once, at most
ITEMS_AT_ONCE = 1000


def share(jobs: int, total: int) -> tuple[int, int]:
    """(jobs at once, items of a job's map at once) for a run of ``jobs`` jobs that may make
    ``total`` Lambda invocations at once (0: no total, the limits above)."""
    if total < 0:
        raise ValueError(f"concurrency {total}: expected 0 (no limit) or more")
    at_once = max(1, min(JOBS_AT_ONCE, jobs))
    if not total:
        return at_once, ITEMS_AT_ONCE
    at_once = min(at_once, total)
    return at_once, max(1, min(ITEMS_AT_ONCE, total // at_once))


def largest(total: int) -> int:
    """The most invocations a run may make at once under ``total`` (0: no total)."""
    return total or JOBS_AT_ONCE * ITEMS_AT_ONCE
