"""moto 5.2.5: moto.stepfunctions.parser.utils.TMP_THREADS only grows.

Every thread the Step Functions interpreter starts (one per execution, one per program, one
per Parallel branch, per inline Map iteration, ...) is appended to the module-level list
TMP_THREADS, which nothing in moto reads or clears (LocalStack, where the code comes from,
joins them at shutdown). A long-lived process (a moto server, an embedded engine) keeps
every finished Thread object for ever.

Expected: finished threads are not kept (len(TMP_THREADS) stays bounded).
Run: python thread_registry_grows.py  (exits 1 while the bug is there)
"""

import json
import sys
import time

import boto3
import moto
from moto import mock_aws
from moto.stepfunctions.parser import utils

EXECUTIONS = 50
DEFINITION = {"StartAt": "Each", "States": {"Each": {
    "Type": "Map", "ItemsPath": "$.items", "End": True,
    "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}}}}


def main() -> int:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="m", definition=json.dumps(DEFINITION),
            roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        before = len(utils.TMP_THREADS)
        for i in range(EXECUTIONS):
            ex = sfn.start_execution(stateMachineArn=arn, name=f"e{i}",
                                     input=json.dumps({"items": [1, 2, 3]}))
            while sfn.describe_execution(executionArn=ex["executionArn"])["status"] == "RUNNING":
                time.sleep(0.01)
        kept = utils.TMP_THREADS[before:]
        dead = sum(not t.is_alive() for t in kept)
    print(f"moto {moto.__version__}: after {EXECUTIONS} finished executions TMP_THREADS holds "
          f"{len(kept)} more threads, {dead} of them finished")
    if dead >= EXECUTIONS:
        print("BUG: every finished thread is kept for the life of the process")
        return 1
    print("OK: finished threads are not kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
