"""The frames between HTTP workers and the inference process, over a Unix stream socket.

A frame is a fixed header (kind, request id, text length, data length) followed by UTF-8
text (a model name, a message or JSON) and raw bytes (float32 images or probabilities,
native byte order: both ends are on one machine). Each frame is written with one
``write`` call, so frames from concurrent tasks never interleave.
"""

import asyncio
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from core.spec import CLASSES, INPUT_SHAPE

__all__ = ["Frame", "Kind", "images_from", "pack", "probabilities_from", "read_frame"]

HEADER = struct.Struct("!BIII")


class Kind(IntEnum):
    # worker -> inference
    HELLO = 1  # text: the worker's pid
    PREDICT = 2  # text: model name, then a space and the W3C traceparent when tracing; data: N x 1 x 28 x 28 float32
    CANCEL = 3  # the caller gave up on this request id
    DESCRIBE = 4
    LOAD = 10  # text: model name (the model repository)
    UNLOAD = 11  # text: model name
    INDEX = 12
    # inference -> worker
    RESULT = 5  # data: N x 10 float32
    OVERLOADED = 6  # text: message (503)
    FAILED = 7  # text: message (the forward pass raised)
    DESCRIPTION = 8  # text: JSON of Engine.describe()
    STATUS = 9  # text: JSON {"ready", "draining", "detail", "weights_generation"}; pushed on every change
    REPLY = 13  # text: JSON, the answer to LOAD, UNLOAD or INDEX
    REFUSED = 14  # text: message (LOAD: the weights on disk failed verification)
    UNLOADED = 15  # text: model name (PREDICT for a model the repository unloaded)


@dataclass(frozen=True)
class Frame:
    kind: Kind
    id: int
    text: str
    data: bytes


def pack(kind: Kind, request_id: int = 0, text: str = "", data: bytes = b"") -> bytes:
    encoded = text.encode()
    return HEADER.pack(kind, request_id, len(encoded), len(data)) + encoded + data


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; ``asyncio.IncompleteReadError`` when the peer has gone."""
    kind, request_id, text_length, data_length = HEADER.unpack(await reader.readexactly(HEADER.size))
    text = (await reader.readexactly(text_length)).decode() if text_length else ""
    data = await reader.readexactly(data_length) if data_length else b""
    return Frame(Kind(kind), request_id, text, data)


def images_from(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.float32).reshape(-1, *INPUT_SHAPE)


def probabilities_from(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.float32).reshape(-1, len(CLASSES))
