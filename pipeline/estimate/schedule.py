"""The wall time of a run: a list-scheduling simulation of its invocations on the Lambda
concurrency, jobs and Map states capped as the state machine caps them."""

from __future__ import annotations

import heapq


def simulate(jobs: list[list[tuple[str, list[float]]]], concurrency: int, job_limit: int,
             map_limit: int, latency: float) -> float:
    """Seconds until every job ends: each job is a list of phases (name, task durations) run
    one after the other, ``latency`` before each phase; at most ``job_limit`` jobs at once
    (0: all), at most ``map_limit`` tasks of one phase at once (0: no cap), and at most
    ``concurrency`` tasks overall. Free slots go to the phases in the order they became
    ready; within a phase, the longest tasks start first."""
    job_limit = job_limit or max(len(jobs), 1)
    map_limit = map_limit or concurrency
    waiting: list[list[float]] = [[] for _ in jobs]  # durations not started, longest last
    left = [0] * len(jobs)  # tasks of the current phase not finished
    running = [0] * len(jobs)
    phase = [-1] * len(jobs)
    pending: list[tuple[float, int, int]] = []  # (ready time, seq, job): phases about to start
    events: list[tuple[float, int]] = []  # (end time, job) of running tasks
    active: list[int] = []  # jobs whose current phase has tasks not started, in ready order
    state = {"seq": 0, "next_job": 0, "end": 0.0}

    def next_phase(j: int, t: float) -> None:
        phase[j] += 1
        if phase[j] >= len(jobs[j]):
            state["end"] = max(state["end"], t)
            start_job(t)
            return
        state["seq"] += 1
        heapq.heappush(pending, (t + latency, state["seq"], j))

    def start_job(t: float) -> None:
        if state["next_job"] < len(jobs):
            state["next_job"] += 1
            next_phase(state["next_job"] - 1, t)

    for _ in range(min(job_limit, len(jobs))):
        start_job(0.0)
    now, busy = 0.0, 0
    while pending or events or active:  # active: tasks ready, waiting for a free slot
        while pending and pending[0][0] <= now:
            _, _, j = heapq.heappop(pending)
            durations = jobs[j][phase[j]][1]
            if not durations:
                next_phase(j, now)
                continue
            waiting[j] = sorted(durations)
            left[j] = len(durations)
            active.append(j)
        for j in list(active):
            while waiting[j] and busy < concurrency and running[j] < map_limit:
                heapq.heappush(events, (now + waiting[j].pop(), j))
                running[j] += 1
                busy += 1
            if not waiting[j]:
                active.remove(j)
            if busy >= concurrency:
                break
        if events and (not pending or events[0][0] <= pending[0][0]):
            now, j = heapq.heappop(events)
            busy -= 1
            running[j] -= 1
            left[j] -= 1
            if left[j] == 0:
                next_phase(j, now)
        elif pending:
            now = max(now, pending[0][0])
    return max(state["end"], now)
