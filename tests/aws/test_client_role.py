"""The generated template's ClientRole allows every request a WorkflowClient makes: the
operator commands (`start`, `describe`, `status`, `history`, `cancel`) run under that role.
The requests are those the client really sends to moto's server, counted by operation."""

from __future__ import annotations

import bank_transaction as bank
import pytest

from .bank import deploy_bank
from .conftest import Aws
from .test_template import _role_permissions, load_sam, translate


def test_client_role_allows_every_request_of_the_client(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before ClientRole had dynamodb:BatchGetItem, `status --table` under it was denied:
    each listing page reads its instances with one BatchGetItem."""
    allowed = {action for action, _ in _role_permissions(translate(load_sam()), "ClientRole")}
    deployed = deploy_bank(aws, monkeypatch)
    client = deployed.client
    aws.requests.clear()
    client.start(bank.make_transaction, bank.BankTransaction(account_id="a", amount=5),
                 workflow_id="tx-role")
    client.describe("tx-role")
    client.list_page(limit=10)
    client.history("tx-role")
    client.cancel("tx-role", "checked by the role test")
    used = {request.replace(".", ":", 1) for request in aws.requests}
    assert {"dynamodb:BatchGetItem", "dynamodb:Query", "sqs:SendMessage"} <= used
    assert used - allowed == set()
