"""Parse a ModelInferRequest without copying its tensor bytes.

Parsing with protobuf copies every ``raw_input_contents`` entry into the message, and reading
the field copies it again into a new ``bytes``; for a 1 MiB cut tensor that is two needless
copies per request. Here the top level of the serialized request is walked once: each
``raw_input_contents`` entry (field 7) becomes a memoryview into the received bytes, and only
the rest (names, shapes, parameters: a few hundred bytes) goes through protobuf.

Only lengths read from the message are used to slice it, and every length is checked against
the bytes actually received; nothing is allocated from a claimed size.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from splitpipe.proto.inference import grpc_service_pb2 as pb

RAW_INPUT_CONTENTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_LENGTH_DELIMITED = 2


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


#: below this size protobuf's own parser is faster than walking the message in Python
ZERO_COPY_FROM = 64 << 10


def parse_infer_request(data: bytes) -> tuple[pb.ModelInferRequest, list[bytes] | list[memoryview]]:
    """The request and its raw contents; for large messages the raw contents are views of
    ``data`` and the returned request lacks them."""
    if len(data) < ZERO_COPY_FROM:
        request = pb.ModelInferRequest.FromString(data)
        return request, list(request.raw_input_contents)
    view = memoryview(data)
    end = len(data)
    pos = 0
    raws: list[memoryview] = []
    kept: list[tuple[int, int]] = []  # byte ranges of every other field, in order
    while pos < end:
        start = pos
        tag = data[pos]
        if tag < 0x80:  # every field number of ModelInferRequest fits one byte
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            if field == RAW_INPUT_CONTENTS:
                if pos + length > end:
                    raise DecodeError("raw_input_contents entry runs past the end of the message")
                raws.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        elif wire_type == 0:
            _, pos = _varint(data, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise DecodeError("field runs past the end of the message")
        if kept and kept[-1][1] == start:
            kept[-1] = (kept[-1][0], pos)
        else:
            kept.append((start, pos))
    # Usually one range: protobuf writes fields in number order and raw contents (7) come last.
    rest = view[kept[0][0] : kept[0][1]] if len(kept) == 1 else b"".join(view[a:b] for a, b in kept)
    request = pb.ModelInferRequest.FromString(rest)
    return request, raws
