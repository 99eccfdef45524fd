"""Custom serialization (Serdes) on AWS (moto's server over HTTP): a step's result, a map
item's value and a call's request and reply are stored in DynamoDB and sent over SQS as their
serdes wrote them; the service reads the request back with its serdes, and every activation
of the workflow (a replay from DynamoDB) sees the values its first run saw."""

from __future__ import annotations

from typing import Any

import orjson

from lambda_workflow import Serdes, Service, WorkflowContext, step, workflow
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler

from .conftest import Aws
from .harness import EventSourceMapping, drain

SEEN: list[Any] = []
RECEIVED: list[str] = []


class Rounded(Serdes[float]):
    """Two decimals, as bytes: the value changes on the round trip."""

    def serialize(self, value: float) -> bytes:
        return f"{value:.2f}".encode()

    def deserialize(self, data: str | bytes) -> float:
        return float(data)


class Upper(Serdes[str]):
    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


shout = Service("shout", str, str, request_serdes=Upper(), response_serdes=Upper())


async def _shout(text: str) -> str:
    RECEIVED.append(text)
    return f"{text}, back"


@step(serdes=Rounded())
def third() -> float:
    return 1 / 3


@workflow
async def serdes_everywhere(ctx: WorkflowContext[str]) -> dict[str, Any]:
    value = await ctx.step(third)

    async def item(word: str) -> str:
        return word

    words = await ctx.map(["a", "b"], item, item_serdes=Upper())
    SEEN.append((value, words.values()))  # on the first run, and on the replay after the reply
    reply = await ctx.call(shout, ctx.request)
    return {"third": value, "words": words.values(), "reply": reply}


def test_serdes_values_on_dynamodb_and_sqs(aws: Aws) -> None:
    config = aws.config(services={"shout": f"sqs:{aws.create_queue(aws.name('s'))}"})
    deployment = AwsDeployment(config, session=aws.session)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url,
                           workflow_handler(serdes_everywhere, deployment=deployment)),
        EventSourceMapping(sqs, config.services["shout"].address,
                           service_handler(shout, _shout, deployment=deployment)),
    ]
    client = WorkflowClient(config, session=aws.session)
    SEEN.clear()
    RECEIVED.clear()
    handle = client.start(serdes_everywhere, "hello", workflow_id="serdes-aws")
    drain(pollers)
    expected = {"third": 0.33, "words": ["A", "B"], "reply": "HELLO, BACK"}
    assert handle.result() == expected
    # the first activation (before the reply) and the replay after it saw the same values
    assert SEEN == [(0.33, ["A", "B"])] * 2
    assert RECEIVED == ["HELLO"]
    ops = {op.name: op for op in handle.history().operations}
    assert orjson.loads(ops["third"].result or b"") == {"serdes": "Rounded",
                                                        "base64": "MC4zMw=="}
    assert orjson.loads(ops["shout"].request) == {"serdes": "Upper", "text": "HELLO"}
    assert orjson.loads(ops["shout"].result or b"") == {"serdes": "Upper",
                                                        "text": "HELLO, BACK"}
    assert orjson.loads(ops["map[0]"].result or b"") == {"v": {"serdes": "Upper", "text": "A"}}
