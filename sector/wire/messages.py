"""Typed requests: each RPC's arguments declared as a ``msgspec.Struct``, decoded and
checked where the handler table calls the handler.

A request travels as a plain msgpack map (``Envelope.a``); a handler declares what it
takes as a ``Request`` subclass naming its op, and ``@typed(ThatRequest)`` turns
``async def handler(self, req: ThatRequest)`` into the ``async def (self, args: dict)``
the RPC server's table calls. What msgspec can say, it checks: types (strictly: no
bool for an int, no str for a number or for bytes), required fields, lengths and
ranges declared with ``msgspec.Meta``. A mismatch is ``BadRequest`` naming the op and
the field (``fs.mkdir: Expected `str`, got `int` - at `$.path```), and the server
closes that connection, as for any malformed message. A sender may build the same
struct and send ``to_args(req)``, the map it stands for.

Rules of a request struct (so the wire stays as it is and peers of other versions get
on):
- unknown fields are ignored: a newer peer may send more than this node reads;
- optional fields have defaults; ``msgspec.UNSET`` where a sender leaves the field out
  (``to_args`` does not send it);
- a constraint goes in the type only where a bad value has always been a
  ``BadRequest``. Checks with another error (``UsageError`` for a replica count out of
  range, ``InvalidPath`` for a bad path) stay in the handler, after decoding, so the
  caller hears the same error as before and keeps its connection.

Subclasses repeat ``frozen=True`` (msgspec inherits it, mypy does not).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import msgspec

from sector.errors import BadRequest

__all__ = ["Request", "decode", "to_args", "typed"]


class Request(msgspec.Struct, kw_only=True, frozen=True):
    """The arguments of one RPC, as its handler takes them; ``op`` names the RPC."""

    op: ClassVar[str] = "request"


S = TypeVar("S", bound=Request)
P = ParamSpec("P")
R = TypeVar("R")


def decode(cls: type[S], args: Any) -> S:
    """``args`` (a request's map) as a ``cls``; BadRequest naming the op and the field."""
    try:
        # bytes are native to msgpack: a str where bytes are declared is a mismatch,
        # not base64 for msgspec to decode.
        return msgspec.convert(args, cls, builtin_types=(bytes,))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{cls.op}: {exc}") from None


def typed(
    cls: type[S],
) -> Callable[
    [Callable[Concatenate[Any, S, P], Awaitable[R]]],
    Callable[Concatenate[Any, dict[str, Any], P], Coroutine[Any, Any, R]],
]:
    """A handler method taking a ``cls``, as the handler table calls it: with the
    request's map, decoded by ``decode``. Any further arguments (a bulk handler's
    channel) pass through."""

    def wrap(
        fn: Callable[Concatenate[Any, S, P], Awaitable[R]],
    ) -> Callable[Concatenate[Any, dict[str, Any], P], Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def handler(self: Any, args: dict[str, Any], /, *more: P.args, **kw: P.kwargs) -> R:
            return await fn(self, decode(cls, args), *more, **kw)

        return handler

    return wrap


def to_args(msg: msgspec.Struct) -> dict[str, Any]:
    """A request (or a struct in one) as the map it travels as, for ``RpcPool.call``
    (bytes stay bytes; ``msgspec.UNSET`` fields are left out)."""
    args: dict[str, Any] = msgspec.to_builtins(msg, builtin_types=(bytes, bytearray, memoryview))
    return args
