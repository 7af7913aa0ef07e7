"""moto 5.2.5: a Distributed Map worker recurses once per item it takes.

DistributedItemProcessorWorker._eval_pool evaluates one item, then calls itself for the
next one (moto/stepfunctions/parser/asl/component/state/exec/state_map/iteration/
itemprocessor/distributed_item_processor_worker.py). With few workers for many items
(MaxConcurrency small, or items >> MaxConcurrency) each worker thread goes one Python frame
deeper per item and keeps every finished item's frame alive until it ends; past about 1,000
items per worker the thread dies of RecursionError, the Map waits for items no worker will
take, and the execution stays RUNNING for ever, where AWS runs the items.

Expected: the execution SUCCEEDS (the worker takes the next item in a loop).
Run: python recursive_map_pool.py  (exits 1 while the bug is there)
"""

import json
import sys
import threading
import time

import boto3
import moto
from moto import mock_aws

ITEMS = 1500
WAIT_S = 30
DEFINITION = {"StartAt": "Each", "States": {"Each": {
    "Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 1, "End": True,
    "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                      "StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}}}}


def main() -> int:
    died = []
    threading.excepthook = lambda args: died.append(repr(args.exc_value)[:80])
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="m", definition=json.dumps(DEFINITION),
            roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        ex = sfn.start_execution(stateMachineArn=arn, name="e",
                                 input=json.dumps({"items": list(range(ITEMS))}))
        deadline = time.monotonic() + WAIT_S
        while (d := sfn.describe_execution(executionArn=ex["executionArn"]))["status"] == \
                "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"moto {moto.__version__}: Distributed Map of {ITEMS} items, MaxConcurrency 1: "
          f"{d['status']} after {WAIT_S} s at most; threads that died: {died}")
    if d["status"] != "SUCCEEDED":
        print("BUG: the worker's recursion (one frame per item) kills it and the Map hangs")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
