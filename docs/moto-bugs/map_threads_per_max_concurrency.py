"""moto 5.2.5: a Distributed Map starts MaxConcurrency worker threads, whatever the items.

DistributedIterationComponent._map_run calls _launch_worker MaxConcurrency times
(moto/stepfunctions/parser/asl/component/state/exec/state_map/iteration/
distributed_iteration_component.py), each starting a thread, even when there are fewer
items than that: a Map with MaxConcurrency 1000 over 4 items starts 1,000 threads, 996 of
which find no item and end. Each costs a thread's start and stack (and an entry in
TMP_THREADS, see thread_registry_grows.py); maps running at once multiply it.

Expected: at most min(MaxConcurrency, items) workers are started.
Run: python map_threads_per_max_concurrency.py  (exits 1 while the bug is there)
"""

import json
import sys
import threading
import time

import boto3
import moto
from moto import mock_aws

ITEMS, MAX_CONCURRENCY = 4, 1000
DEFINITION = {"StartAt": "Each", "States": {"Each": {
    "Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": MAX_CONCURRENCY, "End": True,
    "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                      "StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}}}}


def main() -> int:
    started = 0
    original_start = threading.Thread.start

    def counting_start(self):
        nonlocal started
        started += 1
        original_start(self)

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="m", definition=json.dumps(DEFINITION),
            roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        threading.Thread.start = counting_start
        ex = sfn.start_execution(stateMachineArn=arn, name="e",
                                 input=json.dumps({"items": list(range(ITEMS))}))
        while (d := sfn.describe_execution(executionArn=ex["executionArn"]))["status"] == \
                "RUNNING":
            time.sleep(0.05)
        threading.Thread.start = original_start
    print(f"moto {moto.__version__}: a Distributed Map of {ITEMS} items (MaxConcurrency "
          f"{MAX_CONCURRENCY}) {d['status']}, and the execution started {started} threads")
    if started > MAX_CONCURRENCY:
        print("BUG: one worker thread per MaxConcurrency, not per item")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
