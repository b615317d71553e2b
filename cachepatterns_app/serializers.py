"""
Turn trees of plain values into bytes for Redis and back.

The field-aware part (model rows to plain values) is in ``codecs``; a serializer
here only sees lists, dicts, str, int, float, bool and None. JSON is the default
and is safe to read from a shared Redis. Pickle is opt-in and HMAC-signed with a
key derived from ``SECRET_KEY``: an unsigned or tampered payload is refused before
``pickle.loads`` ever sees it.
"""

from __future__ import annotations

import hmac
import json
import pickle
from typing import Any

from django.utils.crypto import salted_hmac

from cachepatterns_app.exceptions import ConfigurationError, SerializationError

__all__ = [
    "JSONSerializer",
    "MsgpackSerializer",
    "Serializer",
    "SignedPickleSerializer",
    "get_serializer",
]


class Serializer:
    """Encode plain values as bytes; raise ``SerializationError`` on bad input."""

    name = "base"

    def dumps(self, value: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError


_decode_json = json.JSONDecoder().decode


class JSONSerializer(Serializer):
    """Compact JSON; the default."""

    name = "json"
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encoder.encode(value).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise SerializationError(f"Cannot encode value as JSON: {e}") from e

    def loads(self, data: bytes) -> Any:
        try:
            # Decoding first skips json's encoding detection: payloads are always UTF-8.
            return _decode_json(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise SerializationError(f"Payload is not valid JSON: {e}") from e


class MsgpackSerializer(Serializer):
    """MessagePack: smaller and faster to decode than JSON. Needs the ``msgpack`` extra."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "CACHEPATTERNS['SERIALIZER'] is 'msgpack' but msgpack is not installed: "
                "pip install 'cachepatterns[msgpack]'."
            ) from e
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        try:
            return bytes(self._msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError) as e:
            raise SerializationError(f"Cannot encode value as msgpack: {e}") from e

    def loads(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as e:
            raise SerializationError(f"Payload is not valid msgpack: {e}") from e


class SignedPickleSerializer(Serializer):
    """
    Pickle behind an HMAC-SHA256 signature. Opt-in only.

    Unpickling runs code chosen by whoever wrote the bytes, so a payload is only
    unpickled when its signature proves this project (holder of ``SECRET_KEY``)
    wrote it.
    """

    name = "pickle"
    _MAGIC = b"cpP1"
    _SIG_LEN = 32

    def _sign(self, body: bytes) -> bytes:
        return salted_hmac("cachepatterns.pickle", body, algorithm="sha256").digest()

    def dumps(self, value: Any) -> bytes:
        try:
            body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise SerializationError(f"Cannot pickle value: {e}") from e
        return self._MAGIC + self._sign(body) + body

    def loads(self, data: bytes) -> Any:
        head = len(self._MAGIC)
        if not data.startswith(self._MAGIC) or len(data) < head + self._SIG_LEN:
            raise SerializationError("Payload is not a signed pickle; refusing to unpickle it.")
        signature = data[head : head + self._SIG_LEN]
        body = data[head + self._SIG_LEN :]
        if not hmac.compare_digest(signature, self._sign(body)):
            raise SerializationError(
                "Pickle payload has a bad signature (written by another SECRET_KEY, or "
                "tampered with); refusing to unpickle it."
            )
        try:
            return pickle.loads(body)  # noqa: S301 - signature verified above
        except Exception as e:
            raise SerializationError(f"Signed pickle payload failed to load: {e}") from e


SERIALIZERS: dict[str, type[Serializer]] = {
    "json": JSONSerializer,
    "msgpack": MsgpackSerializer,
    "pickle": SignedPickleSerializer,
}

_instances: dict[str, Serializer] = {}


def get_serializer(name: str) -> Serializer:
    """Return the shared serializer instance called ``name``."""
    try:
        return _instances[name]
    except KeyError:
        pass
    try:
        cls = SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"Unknown serializer {name!r}; CACHEPATTERNS['SERIALIZER'] must be one of "
            f"{', '.join(sorted(SERIALIZERS))}."
        ) from None
    instance = _instances[name] = cls()
    return instance
