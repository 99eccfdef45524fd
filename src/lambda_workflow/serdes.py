"""Custom serialization of recorded values: :class:`Serdes` and the adapter that records
its output.

By default every recorded value is JSON through its pydantic type. A :class:`Serdes` replaces
that for one operation: its ``serialize`` turns the value into text or bytes, recorded in an
envelope that names the serdes (``{"serdes": <name>, "text": ...}``, or ``"base64"`` for
bytes), and its ``deserialize`` turns what was recorded back into the value. The first
execution returns the value after a serialize and deserialize round trip, so the first run and
every replay see the same value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import pydantic

# base64, orjson and pydantic_core are imported where used: `import lambda_workflow` exports
# Serdes and stays as cheap as it was (pydantic_core alone costs 10 ms at import).

__all__ = ["Serdes", "SerdesAdapter", "base_adapter", "with_serdes"]

T = TypeVar("T")


class Serdes(Generic[T]):
    """How one operation's value is recorded: subclass it and implement :meth:`serialize`
    and :meth:`deserialize`.

    ``deserialize(serialize(v))`` is what the workflow sees, on the first run and on every
    replay. ``name`` (default: the class's qualified name) is recorded with each value and
    must match when the value is read back: keep it stable while instances are in flight.

    Example:
        >>> class Rounded(Serdes[float]):
        ...     def serialize(self, value: float) -> str:
        ...         return f"{value:.2f}"
        ...     def deserialize(self, data: str | bytes) -> float:
        ...         return float(data)
    """

    @property
    def name(self) -> str:
        """The name recorded with each value (default: the class's qualified name)."""
        return type(self).__qualname__

    def serialize(self, value: T) -> str | bytes:
        """The value as text or bytes."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement serialize")

    def deserialize(self, data: str | bytes) -> T:
        """The value back from what :meth:`serialize` returned (``str`` for text, ``bytes``
        for bytes). A callback's serdes receives the completion's JSON text."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement deserialize")


def _envelope(data: object) -> bool:
    return (isinstance(data, dict) and len(data) == 2 and isinstance(data.get("serdes"), str)
            and (isinstance(data.get("text"), str) or isinstance(data.get("base64"), str)))


def _invalid(message: str, value: object) -> pydantic.ValidationError:
    import pydantic
    import pydantic_core

    error = pydantic_core.PydanticCustomError("serdes", "{message}", {"message": message})
    return pydantic.ValidationError.from_exception_data(
        "serdes", [{"type": error, "loc": (), "input": value}])


class SerdesAdapter:
    """A pydantic ``TypeAdapter`` look-alike (the three methods the runtime and the replay
    cores call) that records values through a :class:`Serdes`.

    ``validate_json`` reads an envelope with the serdes it names (a different name is a
    validation error naming both); a value recorded without a serdes (before the option was
    added) is read through the type, as it was written. With ``external`` (a callback's
    completion, written by another system), a plain value's JSON text goes to
    ``deserialize``. Failures are pydantic errors, so every operation reports them where it
    reports a value that is not valid: naming the operation, recorded deterministically.
    """

    __slots__ = ("base", "external", "serdes")

    def __init__(self, serdes: Serdes[Any], base: pydantic.TypeAdapter[Any], *,
                 external: bool = False) -> None:
        if not isinstance(serdes, Serdes):
            raise TypeError(f"serdes must be a lambda_workflow.Serdes, got {serdes!r}")
        name = serdes.name
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ValueError(f"a serdes's name must be a non-empty printable string, got "
                             f"{name!r}")
        self.serdes = serdes
        self.base = base
        self.external = external

    def dump_python(self, value: Any, mode: str = "json") -> dict[str, str]:
        """The envelope of ``serialize(value)``."""
        import base64

        import pydantic_core

        serdes = self.serdes
        try:
            data = serdes.serialize(value)
        except Exception as exc:
            raise pydantic_core.PydanticSerializationError(
                f"serdes {serdes.name!r} could not serialize the value: "
                f"{type(exc).__name__}: {exc}") from None
        if isinstance(data, str):
            return {"serdes": serdes.name, "text": data}
        if isinstance(data, bytes | bytearray):
            return {"serdes": serdes.name, "base64": base64.b64encode(data).decode()}
        raise pydantic_core.PydanticSerializationError(
            f"serdes {serdes.name!r} serialize returned {type(data).__name__}, not str or bytes")

    def validate_json(self, payload: bytes | str) -> Any:
        """The value recorded in ``payload``."""
        import orjson

        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise _invalid(f"not JSON, cannot be read by serdes {self.serdes.name!r}",
                           payload) from None
        if _envelope(data):
            return self._read(data)
        if self.external:
            text = payload.decode() if isinstance(payload, bytes) else payload
            return self._deserialize(text)
        return self.base.validate_json(payload)

    def validate_python(self, value: Any) -> Any:
        """An envelope read back, or any other value validated through the type."""
        if _envelope(value):
            return self._read(value)
        return self.base.validate_python(value)

    def _read(self, envelope: dict[str, str]) -> Any:
        recorded, name = envelope["serdes"], self.serdes.name
        if recorded != name:
            raise _invalid(f"recorded by serdes {recorded!r}, which is not this operation's "
                           f"serdes {name!r}", recorded)
        import base64

        text = envelope.get("text")
        return self._deserialize(text if text is not None
                                 else base64.b64decode(envelope["base64"]))

    def _deserialize(self, data: str | bytes) -> Any:
        try:
            return self.serdes.deserialize(data)
        except Exception as exc:
            raise _invalid(f"serdes {self.serdes.name!r} could not deserialize "
                           f"{_short(data)}: {type(exc).__name__}: {exc}", data) from None

    def __repr__(self) -> str:
        return f"SerdesAdapter({self.serdes.name!r})"


def _short(data: str | bytes) -> str:
    text = repr(data)
    return text if len(text) <= 60 else text[:57] + "..."


def base_adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    """The adapter of an operation's value type under a serdes: the type's, or ``Any`` for a
    type pydantic has no schema for (a plain class: the serdes alone records it, and a value
    recorded without a serdes is read as plain JSON)."""
    import pydantic

    from ._runtime.contexts import adapter_for  # made once per type

    try:
        return adapter_for(tp)
    except pydantic.PydanticSchemaGenerationError:
        return adapter_for(Any)


def with_serdes(serdes: Serdes[Any] | None, base: pydantic.TypeAdapter[Any], *,
                external: bool = False) -> pydantic.TypeAdapter[Any]:
    """``base``, or an adapter recording through ``serdes`` when one is given (typed as a
    ``TypeAdapter``: it offers the methods the runtime calls)."""
    if serdes is None:
        return base
    adapter: Any = SerdesAdapter(serdes, base, external=external)
    return adapter  # type: ignore[no-any-return]
