"""The typed-message machinery: dataclasses that turn into JSON objects and back.

Every message of the protocol is a frozen dataclass whose fields are the JSON object's
fields, plus its ``type`` (a class constant). :meth:`Message.to_json` leaves out
optional fields that are None; :meth:`Message.from_json` builds the message back and
keeps fields it does not know in :attr:`Message.extra`, so a client stays usable with
a newer daemon. Parsing *requests* is stricter and lives in :mod:`.requests`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

RequestId = str | int | float | None

M = TypeVar("M", bound="Message")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message. ``TYPE`` is the value of the ``type`` field."""

    TYPE: ClassVar[str] = ""
    #: Fields always written, even when None (the protocol shows them as null).
    KEEP_NONE: ClassVar[frozenset[str]] = frozenset()
    #: A dict field whose items are written at the top level of the object.
    FLATTEN: ClassVar[str] = ""

    #: Fields received that this version of the class does not know.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object (``type`` first, ``id`` last)."""
        out: dict[str, Any] = {"type": self.TYPE}
        request_id = None
        for field in dataclasses.fields(self):
            name = field.name
            if name == "extra":
                continue
            value = getattr(self, name)
            if name == "id":
                request_id = value
            elif name == self.FLATTEN:
                out.update(value)
            elif value is not None or name in self.KEEP_NONE:
                out[name] = value
        out.update(self.extra)
        if request_id is not None:
            out["id"] = request_id
        return out

    @classmethod
    def from_json(cls: type[M], data: dict[str, Any]) -> M:
        """Build the message from a JSON object of its type (lenient: extra fields are
        kept in :attr:`extra`, missing optional fields take their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        rest = {k: v for k, v in data.items() if k not in names and k != "type"}
        if cls.FLATTEN:
            known[cls.FLATTEN] = rest
            rest = {}
        return cls(**known, extra=rest)

    def get(self, name: str, default: Any = None) -> Any:
        """A field by its wire name (declared or extra), like ``dict.get``."""
        return self.to_json().get(name, default)


def encode(message: Message | dict[str, Any]) -> str:
    """Serialise a message to the text of one frame (always valid UTF-8)."""
    data = message.to_json() if isinstance(message, Message) else message
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate slipped in (an engine's message?)
            text = json.dumps(data, separators=(",", ":"))
    return text
