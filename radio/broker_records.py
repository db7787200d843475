"""Records read from an MQTT broker: a total JSON parser with a size cap, and signed presence.

Anyone who can publish on the broker can put anything on a swarm's topics, retained: a 100 MB
message, JSON nested ten thousand levels deep, twenty thousand fake presences, a forged
"offline" for a live drone. Everything the MQTT radio and ``swarmfl status --broker`` read
therefore goes through :func:`parse_record` first, which is total: any payload either yields a
flat-enough JSON object or raises :class:`BrokerRecordError` (a
:class:`~swarmfl.errors.PeerError`), never anything else, and never reads more than its cap.

Presence records (``{prefix}/{swarm}/presence/{drone}``, the drone's "online" announcement and
its "offline" last will) are signed: :func:`presence_payload` adds ``mac``, an HMAC-SHA256 with
the swarm key over the topic and the canonical JSON of the record, and :func:`read_presence`
refuses a record whose ``mac`` is missing or wrong. Without the swarm key, a broker client can
neither announce a drone nor take one offline. (The key is the swarm's shared one for now: a
captured drone's key can still sign for the others; per-drone keys are the identity layer's.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from swarmfl.errors import PeerError

__all__ = [
    "MAX_PRESENCE_BYTES",
    "MAX_TELEMETRY_BYTES",
    "BrokerRecordError",
    "parse_record",
    "presence_key",
    "presence_payload",
    "read_presence",
]

#: Presence records are a few hundred bytes; anything much larger is not one.
MAX_PRESENCE_BYTES = 4 * 1024
#: Telemetry (status) records: a few KiB with per-peer details.
MAX_TELEMETRY_BYTES = 64 * 1024
_MAC_FIELD = "mac"
_MAC_BYTES = 16


class BrokerRecordError(PeerError):
    """A message read from the broker is not a record we accept (size, encoding, JSON, MAC)."""


def parse_record(payload: object, max_bytes: int) -> dict[str, Any]:
    """The JSON object in ``payload`` (bytes, at most ``max_bytes``).

    Total: raises :class:`BrokerRecordError` with a short reason for anything else (not bytes,
    empty, over the cap, not UTF-8, not JSON, nested too deeply, not an object), and nothing
    else escapes.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise BrokerRecordError(f"payload is {type(payload).__name__}, not bytes")
    size = len(payload)
    if not size:
        raise BrokerRecordError("empty payload")
    if size > max_bytes:
        raise BrokerRecordError(f"{size} bytes, over the {max_bytes}-byte cap")
    try:
        body = json.loads(bytes(payload).decode("utf-8"))
    except UnicodeDecodeError:
        raise BrokerRecordError("not UTF-8") from None
    except RecursionError:
        raise BrokerRecordError("JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, and int conversions over the digit limit
        raise BrokerRecordError(f"not JSON: {str(exc)[:80]}") from None
    except Exception as exc:  # the parser is total by contract
        raise BrokerRecordError(f"unreadable: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise BrokerRecordError(f"JSON {type(body).__name__}, not an object")
    return body


def presence_key(swarm_key: bytes) -> bytes:
    """The key presence records are signed with, derived from the swarm key.

    A key of its own (domain-separated), so a presence MAC can never pass for a frame tag.
    """
    return hmac.new(swarm_key, b"swarmfl mqtt presence v1", hashlib.sha256).digest()


def _mac(key: bytes, topic: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    message = topic.encode("utf-8") + b"\n" + canonical.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES].hex()


def presence_payload(body: dict[str, Any], topic: str, key: bytes) -> bytes:
    """The signed presence message for ``body`` on ``topic`` (``body`` gets a ``mac`` field)."""
    fields = {k: v for k, v in body.items() if k != _MAC_FIELD}
    fields[_MAC_FIELD] = _mac(key, topic, fields)
    return json.dumps(fields, separators=(",", ":")).encode()


def read_presence(payload: object, topic: str, key: bytes) -> dict[str, Any]:
    """The presence record in ``payload`` if it is well-formed and signed for ``topic``.

    Raises :class:`BrokerRecordError` for an unreadable record (see :func:`parse_record`), a
    field that is not a flat string, a missing ``mac`` or one that does not match.
    """
    body = parse_record(payload, MAX_PRESENCE_BYTES)
    if not all(isinstance(value, str) for value in body.values()):
        raise BrokerRecordError("presence fields must be strings")
    mac = body.pop(_MAC_FIELD, None)
    if mac is None:
        raise BrokerRecordError("unsigned presence")
    if not hmac.compare_digest(mac.encode(), _mac(key, topic, body).encode()):
        raise BrokerRecordError("presence signature does not match")
    return body
