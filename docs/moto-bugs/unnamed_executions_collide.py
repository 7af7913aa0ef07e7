"""moto 5.2.5: start_execution without a name names the execution "None".

With the Step Functions interpreter on (execute_state_machine), an execution started
without ``name`` gets the ARN ``...:execution:<machine>:None``, so the second one fails with
ExecutionAlreadyExists. AWS names an unnamed execution with a new UUID.

Expected: two unnamed executions start, with different generated names.
Run: python unnamed_executions_collide.py  (exits 1 while the bug is there)
"""

import json
import sys

import boto3
import moto
from moto import mock_aws

DEFINITION = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}


def main() -> int:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="m", definition=json.dumps(DEFINITION),
            roleArn="arn:aws:iam::123456789012:role/r")["stateMachineArn"]
        first = sfn.start_execution(stateMachineArn=arn)["executionArn"]
        try:
            second = sfn.start_execution(stateMachineArn=arn)["executionArn"]
        except sfn.exceptions.ExecutionAlreadyExists as exc:
            second = f"refused: {exc}"
    print(f"moto {moto.__version__}: first {first}\n  second {second}")
    if first.endswith(":None") or second.startswith("refused"):
        print("BUG: an unnamed execution is named None, and a second one collides")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
