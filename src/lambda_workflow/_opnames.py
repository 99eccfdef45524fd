"""The recorded names of calls given a name (``ctx.call(service, request, name=...)``).

A call's recorded name routes it: it is the service's name. A call given a name records
``<service>\\x1f<name>``: the service stays first (what routing reads, through
:func:`service_of`), and the separator is a control character no service name may contain
(:class:`~lambda_workflow.Service` refuses them), so the two parts never mix. Histories,
the CLI and errors show the pair as ``<name> (service <service>)`` (:func:`display`).
"""

from __future__ import annotations

__all__ = ["SEPARATOR", "call_name", "display", "label_of", "service_of"]

SEPARATOR = "\x1f"


def call_name(service: str, label: str) -> str:
    """The recorded name of a call of ``service`` named ``label``."""
    return f"{service}{SEPARATOR}{label}"


def service_of(name: str) -> str:
    """The service a call's recorded name routes to."""
    return name.partition(SEPARATOR)[0]


def label_of(name: str) -> str:
    """The name a call was given (the service's name when it was given none)."""
    service, _, label = name.partition(SEPARATOR)
    return label or service


def display(kind: str, name: str) -> str:
    """How an operation's recorded name reads in histories, the CLI and errors."""
    if kind == "call" and SEPARATOR in name:
        service, _, label = name.partition(SEPARATOR)
        return f"{label} (service {service})"
    return name


def check_label(label: object, what: str) -> str:
    """``label`` if it is a usable operation name, else a ``ValueError`` naming ``what``."""
    if not isinstance(label, str) or not label or len(label) > 200 or not label.isprintable():
        raise ValueError(f"{what} must be a non-empty printable string of at most 200 "
                         f"characters, got {label!r}")
    return label
