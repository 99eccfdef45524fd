"""Service(name, request_type, response_type) is typed by its request and response types."""

from typing import reveal_type

from pydantic import BaseModel
from typing_extensions import TypedDict

from lambda_workflow import Service


class BankTransaction(BaseModel):
    account_id: str
    amount: int


class Balance(BaseModel):
    balance: int


class Receipt(TypedDict):
    reference: str


reveal_type(Service("t", BankTransaction, None))  # R: lambda_workflow.service.Service[BankTransaction, None]
reveal_type(Service("balance", BankTransaction, Balance))  # R: lambda_workflow.service.Service[BankTransaction, Balance]
reveal_type(Service("count", str, int))  # R: lambda_workflow.service.Service[str, int]
reveal_type(Service("items", list[int], dict[str, int]))  # R: lambda_workflow.service.Service[list[int], dict[str, int]]
reveal_type(Service("receipt", BankTransaction, Receipt))  # R: lambda_workflow.service.Service[BankTransaction, TypedDict(Receipt, {'reference': str})]
reveal_type(Service("balance", BankTransaction, Balance).name)  # R: str

wrong: Service[BankTransaction, Balance] = Service("t", BankTransaction, None)  # E: assignment
Service("balance", BankTransaction)  # E: call-overload
