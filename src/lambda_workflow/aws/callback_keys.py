"""The callback keys of a deployment, read from Secrets Manager or SSM Parameter Store.

The secret (or SecureString parameter) holds one key, or the ring
``{"current": "<key>", "verify": ["<key>", ...]}`` (see
:class:`~lambda_workflow.callbacks.CallbackKeyRing`). It is read on first use in a Lambda
container and again once ``LAMBDA_WORKFLOW_CALLBACK_KEY_TTL`` seconds have passed, or at once
when a token names a key the cached ring lacks, so a rotation needs no redeploy. A failed
reload keeps the keys read before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..callbacks import CallbackKeyRing, CallbackTokens
from ._clients import AwsClients
from .config import AwsConfig, ConfigurationError

__all__ = ["callback_tokens", "read_parameter", "read_secret"]


def _failure(what: str, exc: Exception) -> ConfigurationError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        reason = f"{error.get('Code', 'error')}: {error.get('Message', '')}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return ConfigurationError(f"cannot read the callback keys from {what} ({reason})")


def read_secret(client: Any, secret_id: str) -> CallbackKeyRing:
    """The ring in Secrets Manager secret ``secret_id`` (its current version's string).

    Raises:
        ConfigurationError: it cannot be read, or does not hold a key or a ring.
    """
    what = f"Secrets Manager secret {secret_id!r} (LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET)"
    try:
        value = client.get_secret_value(SecretId=secret_id)
    except (ClientError, BotoCoreError) as exc:
        raise _failure(what, exc) from exc
    text = value.get("SecretString")
    if not isinstance(text, str):
        raise ConfigurationError(f"{what} has no SecretString; store the key (or the ring's "
                                 "JSON) as the secret's string")
    try:
        return CallbackKeyRing.parse(text, what)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def read_parameter(client: Any, name: str) -> CallbackKeyRing:
    """The ring in SSM parameter ``name``, which must be a SecureString.

    Raises:
        ConfigurationError: it cannot be read, is not a SecureString, or does not hold a key
            or a ring.
    """
    what = f"SSM parameter {name!r} (LAMBDA_WORKFLOW_CALLBACK_KEY_PARAMETER)"
    try:
        parameter = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    except (ClientError, BotoCoreError) as exc:
        raise _failure(what, exc) from exc
    if parameter.get("Type") != "SecureString":
        raise ConfigurationError(f"{what} is a {parameter.get('Type')}; callback keys must be "
                                 "kept in a SecureString parameter (encrypted at rest)")
    try:
        return CallbackKeyRing.parse(parameter["Value"], what)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def callback_tokens(config: AwsConfig, clients: AwsClients,
                    clock: Callable[[], float]) -> CallbackTokens | None:
    """The token signer of a deployment, or ``None`` when no callback keys are configured.
    ``clock`` (seconds) times the cache."""
    loader: Callable[[], CallbackKeyRing]
    if config.callback_key_secret is not None:
        secret = config.callback_key_secret

        def loader() -> CallbackKeyRing:
            return read_secret(clients.secretsmanager, secret)
    elif config.callback_key_parameter is not None:
        parameter = config.callback_key_parameter

        def loader() -> CallbackKeyRing:
            return read_parameter(clients.ssm, parameter)
    elif config.callback_key is not None:  # local and development use
        return CallbackTokens(CallbackKeyRing.parse(config.callback_key,
                                                    "LAMBDA_WORKFLOW_CALLBACK_KEY"))
    else:
        return None
    return CallbackTokens(loader, ttl=config.callback_key_ttl, clock=clock)
