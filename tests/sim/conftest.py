"""The AWS-API server fixtures of tests/aws (moto's server over HTTP on 127.0.0.1)."""

from aws.conftest import aws, moto_endpoint

__all__ = ["aws", "moto_endpoint"]
