"""moto 5.2.5: an exception in the execution thread leaves the execution RUNNING for ever.

ExecutionWorker._execution_logic (moto/stepfunctions/parser/backend/execution_worker.py)
parses the definition, builds the environment, runs the program and records how it ended,
in a daemon thread, with no error handling: whatever raises there (an interpreter bug, or
_reflect_execution_status's RuntimeWarning when the program thread died and left the state
"running") ends the thread silently, and describe_execution answers RUNNING for ever. A
client waiting for the end never returns. States that fail are not the problem: those end
the execution FAILED with States.Runtime.

To stand for such a bug, this script makes the definition's parse fail in the execution
thread only (create_state_machine's validation still parses it normally).

Expected: the execution ends FAILED (States.Runtime, with the exception as its cause).
Run: python execution_thread_raises.py  (exits 1 while the bug is there)
"""

import json
import sys
import threading
import time

import boto3
import moto
from moto import mock_aws
from moto.stepfunctions.parser.backend import execution_worker

WAIT_S = 10
DEFINITION = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}


def broken_entrypoint(self):
    raise RuntimeError("stands for any bug in the interpreter")


def main() -> int:
    execution_worker.ExecutionWorker._get_evaluation_entrypoint = broken_entrypoint
    threading.excepthook = lambda args: print(f"(the execution thread died: {args.exc_value!r})")
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="m", definition=json.dumps(DEFINITION),
            roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        ex = sfn.start_execution(stateMachineArn=arn, name="e", input="{}")
        deadline = time.monotonic() + WAIT_S
        while (status := sfn.describe_execution(executionArn=ex["executionArn"])["status"]) \
                == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"moto {moto.__version__}: status {WAIT_S} s after the execution thread raised: {status}")
    if status == "RUNNING":
        print("BUG: the execution never ends")
        return 1
    print("OK: the execution ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
