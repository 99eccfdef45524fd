"""State stores and transports: the protocols and their implementations.

``memory`` and ``sqlite`` import only the standard library; the AWS backends live in
``lambda_workflow.aws``.
"""

from .protocols import Clock, FifoQueue, QueueMessage, StateStore, Transport

__all__ = ["Clock", "FifoQueue", "QueueMessage", "StateStore", "Transport"]
