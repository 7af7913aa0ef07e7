"""A small interpreter for the part of the Amazon States Language that statemachine.asl.json
uses: the local engine's default, since it starts at once (moto's interpreter costs ~1 s and
~1 CPU-s before the first task: its imports, botocore models and an ANTLR parse).

It runs the definition as written: Task (``arn:aws:states:::lambda:invoke``) with Parameters,
ResultSelector, ResultPath, OutputPath, Retry (interval, backoff, max attempts, jitter) and
Catch; Map (inline and distributed item processors, ItemsPath, ItemSelector, MaxConcurrency
and MaxConcurrencyPath, ToleratedFailurePercentage/Count); Choice (the comparison operators
on one Variable, And, Or, Not); Pass, Succeed and Fail. Paths are the reference paths ``$``,
``$.a.b`` and the context
object's fields of :data:`CONTEXT_FIELDS` (``$$.Map.Item.Value``, ``$$.State.Name``, ...).
:func:`unsupported` names the first thing of a definition outside this, and the engine then
runs it on moto instead, so a definition that grows a feature never runs wrong here.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from pipeline.engine.execution import History
from pipeline.errors import UNCAUGHT_BY_ALL, exhausted, failure_record, shortened

log = logging.getLogger(__name__)

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
#: ``$$.Execution.Id`` of an execution named ``name`` (the embedded engine's fake account),
#: ``$$.StateMachine.Id`` and ``Name``, ``$$.Execution.RoleArn``: as moto's runs have them
EXECUTION_ARN = "arn:aws:states:us-east-1:123456789012:execution:tiffpipe-local:{name}"
STATE_MACHINE_NAME = "tiffpipe-local"
STATE_MACHINE_ARN = f"arn:aws:states:us-east-1:123456789012:stateMachine:{STATE_MACHINE_NAME}"
ROLE_ARN = "arn:aws:iam::123456789012:role/tiffpipe-local"
#: the context object's fields this interpreter fills (docs.aws.amazon.com/step-functions/
#: latest/dg/input-output-contextobject.html); a path to any other ($$.Task.Token, ...) is
#: :func:`unsupported`. Below Execution.Input and Map.Item.Value, any path.
CONTEXT_FIELDS = {
    "Execution": {"Id", "Input", "Name", "RoleArn", "StartTime", "RedriveCount"},
    "State": {"EnteredTime", "Name", "RetryCount"},
    "StateMachine": {"Id", "Name"},
    "Map": {"Item"},
}
_COMMON = {"Type", "Comment", "Next", "End", "InputPath", "OutputPath"}
_FIELDS = {
    "Task": _COMMON | {"Resource", "Parameters", "ResultSelector", "ResultPath", "Retry",
                       "Catch"},
    "Map": _COMMON | {"ItemsPath", "ItemReader", "ItemSelector", "ItemProcessor", "Iterator",
                      "MaxConcurrency", "MaxConcurrencyPath", "ToleratedFailurePercentage",
                      "ToleratedFailureCount",
                      "Label", "ResultSelector", "ResultPath", "Retry", "Catch"},
    "Choice": {"Type", "Comment", "Choices", "Default", "InputPath", "OutputPath"},
    "Pass": _COMMON | {"Parameters", "Result", "ResultPath"},
    "Succeed": {"Type", "Comment", "InputPath", "OutputPath"},
    "Fail": {"Type", "Comment", "Error", "Cause"},
}
_COMPARISONS = {
    "BooleanEquals": lambda a, b: isinstance(a, bool) and a == b,
    "StringEquals": lambda a, b: isinstance(a, str) and a == b,
    "NumericEquals": lambda a, b: _number(a) and a == b,
    "NumericLessThan": lambda a, b: _number(a) and a < b,
    "NumericGreaterThan": lambda a, b: _number(a) and a > b,
    "NumericLessThanEquals": lambda a, b: _number(a) and a <= b,
    "NumericGreaterThanEquals": lambda a, b: _number(a) and a >= b,
    "IsPresent": None, "IsNull": lambda a, b: (a is None) == b,
    "IsBoolean": lambda a, b: isinstance(a, bool) == b,
}
_RETRY_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate",
                 "JitterStrategy", "MaxDelaySeconds"}
_MISSING = object()
S3_GET_OBJECT = "arn:aws:states:::s3:getObject"

#: serves one Lambda invoke: (function ARN, payload) -> (ok, result or error payload)
Invoke = Callable[[str, Any], tuple[bool, Any]]
#: an ItemReader's object: its filled Parameters (Bucket, Key) -> the object's text
ReadItems = Callable[[dict[str, Any]], str]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class StateError(Exception):
    """A state failed with a Step Functions error name and cause."""

    def __init__(self, error: str, cause: str):
        super().__init__(f"{error}: {cause}")
        self.error, self.cause = error, cause
        self.state: str | None = None  # the state that failed (set as it leaves it)


class TimedOut(StateError):
    """The execution ran longer than the definition's TimeoutSeconds: it fails with
    States.Timeout (status TIMED_OUT on AWS), which no Retry or Catch sees."""


def _cause_text(failure: StateError, limit: int = 1000) -> str:
    """The message of a failed item (as a report gives it: :func:`failure_record`), cut to
    ``limit`` characters."""
    return shortened(failure_record({"Error": failure.error, "Cause": failure.cause})["message"],
                     limit)


class Aborted(BaseException):
    """The execution was stopped (:meth:`Interpreter.abort`, as StopExecution on AWS): a
    BaseException, so no Retry or Catch (and no step's error record) sees it."""


# --- what is supported ---------------------------------------------------------------------


def _path_ok(path: Any, context: bool = True) -> bool:
    if path is None:
        return True
    if not isinstance(path, str):
        return False
    in_context = context and path.startswith("$$")
    body = path[2:] if in_context else path[1:]
    if not path.startswith("$") or not (body == "" or (body.startswith(".") and all(
            part.replace("_", "").isalnum() for part in body[1:].split(".")))):
        return False
    parts = body[1:].split(".") if body else []
    if in_context and parts:  # only the fields it fills (CONTEXT_FIELDS)
        if parts[0] not in CONTEXT_FIELDS or (
                len(parts) > 1 and parts[1] not in CONTEXT_FIELDS[parts[0]]):
            return False
        if parts[0] == "Map" and len(parts) > 2 and parts[2] not in ("Value", "Index"):
            return False
        return len(parts) <= 2 or parts[:2] in (["Execution", "Input"], ["Map", "Item"])
    return True


def iso_time(moment: datetime.datetime | None = None) -> str:
    """A time (default: now) as the context object gives it on AWS: ISO 8601 in UTC, to the
    millisecond (``2019-03-26T20:14:13.192Z``)."""
    utc = (moment or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _template_problem(value: Any, where: str) -> str | None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k.endswith(".$") and not _path_ok(v):
                return f"{where}: {k} = {v!r} (only reference paths)"
            problem = _template_problem(v, f"{where}.{k}")
            if problem:
                return problem
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problem = _template_problem(v, f"{where}[{i}]")
            if problem:
                return problem
    return None


def _choice_problem(rule: dict[str, Any], name: str) -> str | None:
    for key in ("And", "Or"):
        if key in rule:
            return next((p for r in rule[key] if (p := _choice_problem(r, name))), None)
    if "Not" in rule:
        return _choice_problem(rule["Not"], name)
    ops = [k for k in rule if k not in ("Variable", "Next", "Comment")]
    if len(ops) != 1 or ops[0] not in _COMPARISONS or not _path_ok(rule.get("Variable")):
        return f"{name}: choice rule {sorted(rule)}"
    return None


def unsupported(machine: dict[str, Any]) -> str | None:
    """What of ``machine`` (a parsed definition) this interpreter cannot run, or None."""
    states = machine.get("States")
    if not isinstance(states, dict) or machine.get("StartAt") not in states:
        return "StartAt or States"
    extra = set(machine) - {"Comment", "StartAt", "States", "TimeoutSeconds", "Version"}
    if extra:
        return f"top-level fields {sorted(extra)}"
    for name, state in states.items():
        kind = state.get("Type")
        extra = set(state) - _FIELDS.get(kind, set())
        if kind not in _FIELDS or extra:
            return f"state {name}: {kind} {sorted(extra)}"
        if kind == "Task" and state.get("Resource") != LAMBDA_INVOKE:
            return f"state {name}: Resource {state.get('Resource')}"
        for key in ("InputPath", "OutputPath", "ResultPath", "ItemsPath"):
            if not _path_ok(state.get(key), context=key == "ItemsPath"):
                return f"state {name}: {key} {state.get(key)!r}"
        for key in ("Parameters", "ResultSelector", "ItemSelector"):
            problem = _template_problem(state.get(key), f"{name}.{key}")
            if problem:
                return problem
        for retrier in state.get("Retry", []):
            if set(retrier) - _RETRY_FIELDS:
                return f"state {name}: Retry fields {sorted(set(retrier) - _RETRY_FIELDS)}"
        for rule in state.get("Choices", []):
            problem = _choice_problem(rule, name)
            if problem:
                return problem
        reader = state.get("ItemReader")
        if reader is not None and (reader.get("Resource") != S3_GET_OBJECT
                                   or reader.get("ReaderConfig", {}) != {"InputType": "JSON"}
                                   or set(reader) - {"Resource", "ReaderConfig", "Parameters"}):
            return f"state {name}: ItemReader {reader} (only s3:getObject of a JSON array)"
        problem = _template_problem((reader or {}).get("Parameters"), f"{name}.ItemReader")
        if problem:
            return problem
        if kind == "Map":
            processor = state.get("ItemProcessor") or state.get("Iterator") or {}
            config = set(processor.get("ProcessorConfig", {})) - {"Mode", "ExecutionType"}
            if config:
                return f"state {name}: ProcessorConfig {sorted(config)}"
            problem = unsupported({k: v for k, v in processor.items()
                                   if k != "ProcessorConfig"})
            if problem:
                return f"{name} > {problem}"
    return None


# --- paths and templates -------------------------------------------------------------------


def _max_concurrency(name: str, path: str, data: Any, context: dict[str, Any]) -> int:
    """A Map's MaxConcurrencyPath, resolved: a non-negative integer (0: no limit), as Step
    Functions requires (else States.Runtime)."""
    value = get_path(path, data, context)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError("States.Runtime", f"{name}: MaxConcurrencyPath {path} gives "
                         f"{value!r}, not a non-negative integer")
    return value


def get_path(path: str, data: Any, context: dict[str, Any]) -> Any:
    """The value at a reference path (``$``-rooted in ``data``, ``$$``-rooted in
    ``context``); States.Runtime if a field is missing."""
    root, body = (context, path[2:]) if path.startswith("$$") else (data, path[1:])
    value = root
    for part in body.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            raise StateError("States.Runtime", f"the JSONPath {path} could not be found in "
                                               f"the input {json.dumps(data)[:500]}")
        value = value[part]
    return value


def _present(path: str, data: Any, context: dict[str, Any]) -> Any:
    try:
        return get_path(path, data, context)
    except StateError:
        return _MISSING


def fill(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """A Parameters / ItemSelector / ResultSelector template filled from ``data``."""
    if isinstance(template, dict):
        out = {}
        for k, v in template.items():
            if k.endswith(".$"):
                out[k[:-2]] = get_path(v, data, context)
            else:
                out[k] = fill(v, data, context)
        return out
    if isinstance(template, list):
        return [fill(v, data, context) for v in template]
    return template


def put_result(data: Any, path: str | None, result: Any) -> Any:
    """ResultPath: the state's input with ``result`` at ``path`` (``$``, the default: the
    result alone; null: the input unchanged), the objects on the way made if missing. A
    path through a value that is not an object (the input itself, or a field on the way: a
    string, a list, null) fails the state with States.ResultPathMatchFailure, as on AWS."""
    if path is None:
        return data
    if path == "$":
        return result
    out = json.loads(json.dumps(data))  # a copy: the input may be shared by map items
    node, at = out, "$"
    parts = path[2:].split(".")
    for part in [None, *parts[:-1]]:
        if part is not None:
            node = node.setdefault(part, {})
            at = f"{at}.{part}"
        if not isinstance(node, dict):
            raise StateError("States.ResultPathMatchFailure",
                             f"Unable to apply ResultPath {path} to the state's input: {at} "
                             f"is {json.dumps(node)[:200]}, not an object")
    node[parts[-1]] = result
    return out


def _matches(rule: dict[str, Any], data: Any, context: dict[str, Any], name: str) -> bool:
    """Whether the choice rule matches (of the Choice state ``name``). A Variable that is not
    there fails the state with States.Runtime, as on AWS, but for IsPresent."""
    if "And" in rule:
        return all(_matches(r, data, context, name) for r in rule["And"])
    if "Or" in rule:
        return any(_matches(r, data, context, name) for r in rule["Or"])
    if "Not" in rule:
        return not _matches(rule["Not"], data, context, name)
    (op, expected), = ((k, v) for k, v in rule.items()
                       if k not in ("Variable", "Next", "Comment"))
    value = _present(rule["Variable"], data, context)
    if op == "IsPresent":
        return (value is not _MISSING) == expected
    if value is _MISSING:
        raise StateError("States.Runtime", f"An error occurred while executing the state "
                         f"'{name}'. Invalid path '{rule['Variable']}': The choice state's "
                         "condition path references an invalid value.")
    return bool(_COMPARISONS[op](value, expected))


def _error_matches(names: list[str], error: str) -> bool:
    """Whether a Retry's or Catch's ErrorEquals ``names`` match ``error``: by name, or by a
    wildcard: States.ALL any error, States.TaskFailed any but States.Timeout (as AWS
    documents it), neither one of
    :data:`~pipeline.errors.UNCAUGHT_BY_ALL`."""
    if error in names:
        return True
    if error in UNCAUGHT_BY_ALL:
        return False
    return "States.ALL" in names or ("States.TaskFailed" in names and error != "States.Timeout")


# --- running -------------------------------------------------------------------------------


def _invoke_error(function: str, payload: Any, exc: Exception) -> dict[str, Any]:
    """The Lambda error payload of a task whose invoke raised in this process
    (:func:`~pipeline.engine.workers.error_payload`: out of memory named so)."""
    from pipeline.engine.workers import error_payload

    name = function.rpartition(":")[2] or "task"
    return error_payload(exc, name, payload)


def _item_error(name: str, index: int, exc: Exception) -> StateError:
    """A Map item that failed outside its states (its thread ran out of memory): the item's
    failure, named as a task's would be, instead of the interpreter's end."""
    payload = _invoke_error(f"item {index} of {name}", None, exc)
    return StateError(payload["errorType"], json.dumps(payload, separators=(",", ":")))


class CheckedThread(threading.Thread):
    """A thread whose :meth:`start` cannot hang: ``Thread.start`` waits, without a timeout,
    for the new thread to say it runs, and one that dies before it does (an allocation of
    its start-up failing, out of memory) left the starting thread, and with it the run,
    waiting for ever at 0 CPU. Here its start raises ``RuntimeError`` (``can't start new
    thread``, naming the thread and what killed it) at once, as a thread that cannot start
    at all does, which the engine's callers already handle."""

    _died: BaseException | None = None

    def _bootstrap(self) -> None:  # (Python's own, run by the new thread)
        try:
            super()._bootstrap()
        except BaseException as exc:
            if self._started.is_set():  # died after it said it runs: Python's as usual
                raise
            self._died = exc
            with threading._active_limbo_lock:  # type: ignore[attr-defined]
                threading._limbo.pop(self, None)  # type: ignore[attr-defined]
            self._started.set()  # the starting thread's wait ends: start() raises

    def start(self) -> None:
        super().start()
        if self._died is not None:
            first = self._died  # (what killed it, before what Python's clean-up then raised)
            while first.__context__ is not None:
                first = first.__context__
            raise RuntimeError(f"can't start new thread: {self.name} died as it started "
                               f"({type(first).__name__}: {first})") from self._died


def run_items(one: Callable[[int], None], count: int, threads: int) -> None:
    """``one(i)`` for each ``i`` in ``range(count)``, on up to ``threads`` threads: this one
    and helpers, each taking the next item until none is left; returns once every item
    taken has ended; the first exception ``one`` raised (:class:`Aborted`, an engine error) is
    raised here then.

    Running short of memory or threads must neither stop the execution nor hang it: a
    helper that cannot start (``can't start new thread``) leaves its share to the threads
    that run, this one included, and this thread waits only for the items a thread took,
    each counted out in a ``finally`` that allocates nothing. (A ThreadPoolExecutor whose
    thread died of a MemoryError never completes the futures queued for it: the map waited
    for ever, at 0 CPU.) The helpers are threading's threads, not daemons: the threads they
    start (a task's, in the engine's process) are not daemons either, as a daemon task
    would be cut off at the command's exit. A helper that dies as it starts, before it says
    it runs, is one that cannot start (:class:`CheckedThread`)."""
    if threads <= 1 or count <= 1:
        for i in range(count):
            one(i)
        return
    lock = threading.Condition(threading.Lock())
    state = [0, 0]  # [next item, items taken and not ended]
    raised: list[BaseException] = []

    def take() -> int:
        with lock:
            i = state[0]
            if i >= count:
                return -1
            after, taken = i + 1, state[1] + 1  # (what may fail to allocate, before either)
            state[0], state[1] = after, taken
            return i

    def work() -> None:
        while True:
            i = take()
            if i < 0:
                return
            try:
                one(i)
            except BaseException as exc:  # noqa: BLE001 - (Aborted) raised by the caller
                raised.append(exc)
            finally:
                with lock:
                    state[1] -= 1
                    lock.notify_all()

    started, short = 0, False
    for _ in range(threads - 1):
        if state[0] >= count:
            break
        try:
            CheckedThread(target=work, name="tiffpipe-map", daemon=False).start()
            started += 1
        except RuntimeError:  # can't start new thread: the running threads do it all
            short = True
            break
    if short:
        log.warning("a Map ran its items on %d thread(s) of the %d it wanted: no thread could "
                    "start (out of memory, or the process's limit of threads)", started + 1,
                    threads)
    work()
    with lock:
        while state[1]:
            lock.wait(1.0)  # (woken as each ends; the timeout is against a lost wake-up)
    if raised:
        raise raised[0]


class Interpreter:
    """Runs a state machine: Lambda tasks through ``invoke``; Map items on at most
    ``map_threads`` threads per Map state (``MaxConcurrency`` bounds them too).

    :meth:`abort` (from any thread) stops the execution: no state or Map item starts after
    it, a Retry's wait ends, and :meth:`run` raises :class:`Aborted` once the states
    running end (``invoke`` may raise :class:`Aborted` too, to end one at once)."""

    def __init__(self, machine: dict[str, Any], invoke: Invoke, map_threads: int,
                 sleep: Callable[[float], object] | None = None,
                 read_items: ReadItems | None = None,
                 on_timeout: Callable[[], object] | None = None,
                 history: History | None = None):
        self.machine, self.invoke, self.map_threads = machine, invoke, max(1, map_threads)
        #: the events of the execution (None: not kept, the default)
        self.history = history
        #: the top-level Maps' items that failed, or whose error a Catch took
        #: (:attr:`Execution.failures`)
        self.failures: list[dict[str, Any]] = []
        #: the top-level Maps' items running: their execution's name -> map, index, value
        self._items: dict[str, dict[str, Any]] = {}
        self.read_items = read_items
        self.on_timeout = on_timeout
        self._aborted = threading.Event()
        self._timed_out = False
        # a Retry's wait: on the abort event by default, so that an abort ends it
        self.sleep = sleep or self._aborted.wait

    def run(self, data: Any, name: str) -> Any:
        """The execution's output, or StateError, or Aborted. Past the definition's
        TimeoutSeconds the execution stops as on :meth:`abort` (``on_timeout`` is called
        then: to stop the tasks running) and fails with :class:`TimedOut`."""
        timeout = self.machine.get("TimeoutSeconds")
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self._time_out)
            timer.daemon = True
            timer.start()
        try:
            output = self._machine(self.machine, data, {
                "Execution": {"Id": EXECUTION_ARN.format(name=name), "Input": data,
                              "Name": name, "RoleArn": ROLE_ARN, "StartTime": iso_time(),
                              "RedriveCount": 0},
                "StateMachine": {"Id": STATE_MACHINE_ARN, "Name": STATE_MACHINE_NAME}})
        except (Aborted, StateError):
            if not self._timed_out:  # (a task stopped by it may have failed instead)
                raise
            output = None
        finally:
            if timer is not None:
                timer.cancel()
        if self._timed_out:  # (even if its last state ended after it)
            raise TimedOut("States.Timeout", f"the execution ran longer than the definition's "
                           f"TimeoutSeconds ({timeout} s)")
        return output

    def _time_out(self) -> None:
        self._timed_out = True
        self.abort()
        if self.on_timeout is not None:
            self.on_timeout()

    def abort(self) -> None:
        """Stop the execution (thread-safe): see the class."""
        self._aborted.set()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def _check(self) -> None:
        if self._aborted.is_set():
            raise Aborted("the execution was stopped")

    def _event(self, kind: str, execution: str, state: str | None, **details: Any) -> None:
        if self.history is not None:
            self.history.add(kind, execution, state, **details)

    def _machine(self, machine: dict[str, Any], data: Any, context: dict[str, Any],
                 where: str = "") -> Any:
        """Runs ``machine`` (the definition, or a Map's item processor: the execution
        ``where``, "" for the run's) to its end. A state's failure names the state
        (:attr:`StateError.state`)."""
        name = machine["StartAt"]
        while True:
            self._check()
            state = machine["States"][name]
            entered = {**context, "State": {"EnteredTime": iso_time(), "Name": name,
                                            "RetryCount": 0}}
            self._event("StateEntered", where, name)
            try:
                data, after = self._state(name, state, data, entered, where)
            except StateError as exc:
                if exc.state is None:
                    exc.state = name
                self._event("ExecutionFailed", where, exc.state, error=exc.error,
                            cause=exc.cause)
                raise
            self._event("StateExited", where, name)
            name = after
            if name is None:
                return data

    def _state(self, name: str, state: dict[str, Any], raw: Any, context: dict[str, Any],
               where: str = "") -> tuple[Any, str | None]:
        kind = state["Type"]
        path = state.get("InputPath", "$")
        data = {} if path is None else get_path(path, raw, context)
        if kind == "Fail":
            raise StateError(state.get("Error", "States.Fail"), state.get("Cause", ""))
        if kind == "Choice":
            target = next((r["Next"] for r in state["Choices"]
                           if _matches(r, data, context, name)), state.get("Default"))
            if target is None:
                raise StateError("States.NoChoiceMatched", f"no choice of {name} matched")
            return self._output(state, data, context), target
        try:
            if kind == "Pass":
                result = (fill(state["Parameters"], data, context) if "Parameters" in state
                          else state.get("Result", data))
            elif kind == "Succeed":
                return self._output(state, data, context), None
            else:
                result = self._with_retries(name, state, data, context, where)
                if "ResultSelector" in state:
                    result = fill(state["ResultSelector"], result, context)
            out = put_result(raw, state.get("ResultPath", "$"), result)
        except StateError as exc:
            catcher = next((c for c in state.get("Catch", [])
                            if _error_matches(c["ErrorEquals"], exc.error)), None)
            if catcher is None:
                raise
            item = self._items.get(where) if where else None
            if item is not None:  # a job's error a Catch took: said if it leaves no result
                self.failures.append({**item, "state": name, "error": exc.error,
                                      "cause": exc.cause, "caught_by": catcher["Next"]})
            self._event("StateCaught", where, name, error=exc.error, cause=exc.cause,
                        next=catcher["Next"])
            error = {"Error": exc.error, "Cause": exc.cause}
            return put_result(raw, catcher.get("ResultPath", "$"), error), catcher["Next"]
        return self._output(state, out, context), None if state.get("End") else state["Next"]

    @staticmethod
    def _output(state: dict[str, Any], data: Any, context: dict[str, Any]) -> Any:
        path = state.get("OutputPath", "$")
        return {} if path is None else get_path(path, data, context)

    def _with_retries(self, name: str, state: dict[str, Any], data: Any,
                      context: dict[str, Any], where: str = "") -> Any:
        attempts: dict[int, int] = {}
        while True:
            retries = sum(attempts.values())
            if retries:  # $$.State.RetryCount
                context = {**context, "State": {**context["State"], "RetryCount": retries}}
            try:
                return self._task(state, data, context, where) if state["Type"] == "Task" \
                    else self._map(name, state, data, context, where)
            except StateError as exc:
                index = next((i for i, r in enumerate(state.get("Retry", []))
                              if _error_matches(r["ErrorEquals"], exc.error)), None)
                if index is None:
                    raise
                retrier = state["Retry"][index]
                n = attempts.get(index, 0)
                if n >= retrier.get("MaxAttempts", 3):
                    raise
                attempts[index] = n + 1
                if not where and state["Type"] == "Map":  # its items run again: their
                    self.failures = [f for f in self.failures  # failures are the new run's
                                     if f.get("map") != name]
                delay = retrier.get("IntervalSeconds", 1) * retrier.get("BackoffRate", 2.0) ** n
                delay = min(delay, retrier.get("MaxDelaySeconds", delay))
                if retrier.get("JitterStrategy") == "FULL":
                    import random  # only on a retry: not within every run's time

                    delay = random.uniform(0, delay)
                self.sleep(delay)
                self._check()

    def _task(self, state: dict[str, Any], data: Any, context: dict[str, Any],
              where: str = "") -> Any:
        params = fill(state.get("Parameters", {}), data, context)
        function = params.get("FunctionName", "")
        name = context["State"]["Name"]
        self._event("TaskScheduled", where, name, resource=function,
                    action=(params.get("Payload") or {}).get("action")
                    if isinstance(params.get("Payload"), dict) else None)
        try:
            ok, payload = self.invoke(function, params.get("Payload"))
        except StateError:
            raise
        except Exception as exc:
            # serving it failed in this process for want of memory, a thread to run it on
            # or a file for a worker's pipe: the task fails with that error, named, so that
            # its job's Catch records it and the other jobs go on; any other error (the
            # engine's: a function it does not have) still stops the execution
            if exhausted(exc) is None:
                raise
            ok, payload = False, _invoke_error(function, params.get("Payload"), exc)
        if not ok:
            error = payload.get("errorType") if isinstance(payload, dict) else None
            cause = json.dumps(payload, separators=(",", ":"))
            self._event("TaskFailed", where, name, error=error or "Exception", cause=cause)
            raise StateError(error or "Exception", cause)
        self._event("TaskSucceeded", where, name)
        return {"ExecutedVersion": "$LATEST", "Payload": payload, "StatusCode": 200}

    def _map(self, name: str, state: dict[str, Any], data: Any, context: dict[str, Any],
             where: str = "") -> list[Any]:
        items = (self._read(name, state["ItemReader"], data, context) if "ItemReader" in state
                 else get_path(state.get("ItemsPath", "$"), data, context))
        if not isinstance(items, list):
            raise StateError("States.Runtime", f"{name}: ItemsPath does not give an array")
        processor = state.get("ItemProcessor") or state["Iterator"]
        limit = (_max_concurrency(name, state["MaxConcurrencyPath"], data, context)
                 if "MaxConcurrencyPath" in state else state.get("MaxConcurrency"))
        limit = limit or len(items) or 1
        tolerated_pct = state.get("ToleratedFailurePercentage")
        tolerated = state.get("ToleratedFailureCount")
        distributed = processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"
        results: list[Any] = [None] * len(items)
        failures: list[StateError] = []
        lock = threading.Lock()
        stop = threading.Event()

        def too_many() -> bool:
            if not distributed or (tolerated_pct is None and tolerated is None):
                return bool(failures)
            over_count = tolerated is not None and len(failures) > tolerated
            over_pct = tolerated_pct is not None and \
                100.0 * len(failures) / max(1, len(items)) > tolerated_pct
            return over_count or over_pct

        def one(i: int) -> None:
            if stop.is_set() or self._aborted.is_set():  # a failed map starts no more items
                return
            label = f"{where}/{name}/{i}" if where else f"{name}/{i}"
            if not where:  # a child execution of the run's (a job's): Execution.failures
                self._items[label] = {"map": name, "index": i, "value": items[i] if isinstance(
                    items[i], (int, str)) else None}
            try:
                item_context = {**context, "Map": {"Item": {"Value": items[i], "Index": i}}}
                item = (fill(state["ItemSelector"], data, item_context)
                        if "ItemSelector" in state else items[i])
                results[i] = self._machine(processor, item, item_context, label)
            except StateError as exc:
                failed(exc, label)
            except Exception as exc:  # out of memory, no thread: the item's failure
                if exhausted(exc) is None:
                    raise
                failed(_item_error(name, i, exc), label)
            finally:
                self._items.pop(label, None)

        def failed(exc: StateError, label: str) -> None:
            item = self._items.get(label)
            if item is not None:
                self.failures.append({**item, "state": exc.state or name, "error": exc.error,
                                      "cause": exc.cause})
            with lock:
                failures.append(exc)
                if too_many():
                    stop.set()

        threads = max(1, min(limit, self.map_threads, len(items)))
        run_items(one, len(items), threads)
        self._check()  # items skipped after an abort: no result
        if too_many():
            if distributed and (tolerated_pct is not None or tolerated is not None):
                raise StateError("States.ExceedToleratedFailureThreshold",
                                 f"The specified tolerated failure threshold was exceeded "
                                 f"({len(failures)} of {len(items)} items of {name} failed; "
                                 f"first: {failures[0].error}: {_cause_text(failures[0])})")
            # the item's error, as this state's (an inner Map's item's state is not the
            # state of this execution that failed)
            raise StateError(failures[0].error, failures[0].cause) from failures[0]
        return results

    def _read(self, name: str, reader: dict[str, Any], data: Any, context: dict[str, Any]
              ) -> Any:
        """The items an ItemReader names: a JSON array, read by ``read_items``."""
        params = fill(reader.get("Parameters", {}), data, context)
        if self.read_items is None:
            raise StateError("States.ItemReaderFailed", f"{name}: no ItemReader is served")
        try:
            return json.loads(self.read_items(params))
        except Exception as exc:  # the map fails, as on AWS, with the cause
            raise StateError("States.ItemReaderFailed",
                             f"{name}: reading {params}: {type(exc).__name__}: {exc}") from exc
