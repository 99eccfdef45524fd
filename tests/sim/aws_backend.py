"""The simulator's DynamoDB backend: a fresh table and bucket on the local AWS-API server
(moto's server over HTTP on 127.0.0.1), payloads offloaded to S3 above a small threshold, and
one store object per simulated Lambda container (each with its own second-writer memory)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import boto3
from botocore.exceptions import ClientError

from lambda_workflow.aws.dynamodb import DynamoDBStateStore, table_definition
from lambda_workflow.aws.payloads import S3PayloadStore

from .faults import Faults, FaultyClient
from .simulator import Backend

REGION = "us-east-1"
# Small enough that inputs, results and most requests of the simulated workflows go to S3.
PAYLOAD_THRESHOLD = 24
_names = itertools.count()


def throttled(what: str) -> Exception:
    return ClientError({"Error": {"Code": "ThrottlingException",
                                  "Message": f"Rate exceeded (injected at {what})"}},
                       what.split(" ")[0])


def dynamodb_backend(endpoint: str, *, session: boto3.Session | None = None) -> Backend:
    """A new table and bucket on the server at ``endpoint``."""
    session = session or boto3.Session(region_name=REGION, aws_access_key_id="testing",
                                       aws_secret_access_key="testing")
    ddb: Any = session.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    s3: Any = session.client("s3", endpoint_url=endpoint, region_name=REGION)
    n = next(_names)
    table, bucket = f"sim-workflows-{n}", f"sim-payloads-{n}"
    ddb.create_table(TableName=table, **table_definition())
    s3.create_bucket(Bucket=bucket)

    def open_store(faults: Faults) -> DynamoDBStateStore:
        faulty_ddb: Any = FaultyClient(ddb, faults)
        faulty_s3: Any = FaultyClient(s3, faults, s3=True)
        return DynamoDBStateStore(
            faulty_ddb, table, payloads=S3PayloadStore(faulty_s3, bucket),
            payload_threshold=PAYLOAD_THRESHOLD)

    observer = DynamoDBStateStore(ddb, table, payloads=S3PayloadStore(s3, bucket),
                                  payload_threshold=PAYLOAD_THRESHOLD)

    def remove_payload(rng: random.Random, workflow_id: str) -> str | None:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"lambda-workflow/{workflow_id}/")
        keys = sorted(o["Key"] for o in listed.get("Contents", []))
        if not keys:
            return None
        key = rng.choice(keys)
        s3.delete_object(Bucket=bucket, Key=key)
        return str(key)

    return Backend("dynamodb", open_store, observer, throttled, concurrent=True,
                   remove_payload=remove_payload)
