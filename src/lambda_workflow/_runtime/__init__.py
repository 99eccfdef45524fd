"""The activation engine: a deterministic event loop, replay, outbox and history."""
