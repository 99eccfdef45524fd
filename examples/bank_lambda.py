"""The bank transaction workflow on AWS: the Lambda handlers of deploy/template.yaml.

- ``handle_workflow``: the workflow function, fed by the workflow FIFO queue.
- ``handle_balance``: the balance service, fed by its SQS queue.
- ``handle_fraud``: the fraud service, invoked asynchronously by the workflow function.
- ``handle_timers``: the timer function, fed by the timer queue (durable timers, ``ctx.sleep``).
- The transaction service is ``plain_transaction_service.handler``: written with boto3 only,
  to show what a service in any language does (docs/protocol.md).

Every function reads its settings from ``LAMBDA_WORKFLOW_*`` environment variables.
Build the deployment zip with::

    lambda-workflow package examples/bank_lambda.py examples/bank_transaction.py \\
        examples/plain_transaction_service.py --arch arm64 -o build/bank.zip
"""

from __future__ import annotations

from bank_transaction import (
    balance_service,
    check_fraud,
    fraud_service,
    get_balance,
    make_transaction,
)

from lambda_workflow.aws import service_handler, timer_handler, workflow_handler

handle_workflow = workflow_handler(make_transaction)
handle_balance = service_handler(balance_service, get_balance)
handle_fraud = service_handler(fraud_service, check_fraud)
handle_timers = timer_handler()
