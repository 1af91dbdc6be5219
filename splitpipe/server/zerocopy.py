"""Split a serialized ModelInferRequest into its small fields, its id and its tensor bytes.

Parsing with protobuf copies every ``raw_input_contents`` entry into the message, and reading
the field copies it again into a new ``bytes``; for a 1 MiB cut tensor that is two needless
copies per request. Here the top level of the serialized request is walked once (a handful of
fields, whatever the tensor sizes): each ``raw_input_contents`` entry (field 7) becomes a
memoryview into the received bytes, the ``id`` (field 3) is read on its own, and everything else
(model name and version, inputs with names, datatypes, shapes and codec parameters, requested
outputs: a few hundred bytes) is returned as one byte string. That string is the same for every
frame of one model, shape and codec setting, so the server checks it once and keeps the result
(:class:`~splitpipe.server.request.Checked`); protobuf parses it only when it is new.

Only lengths read from the message are used to slice it, and every length is checked against
the bytes actually received; nothing is allocated from a claimed size.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from splitpipe.proto.inference import grpc_service_pb2 as pb

_FIELDS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
_LENGTH_DELIMITED = 2
# tags (field number and wire type) of the two fields split off; every other field is kept as is
_RAW_TAG = (_FIELDS["raw_input_contents"].number << 3) | _LENGTH_DELIMITED
_ID_TAG = (_FIELDS["id"].number << 3) | _LENGTH_DELIMITED


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


def split_request(data: bytes) -> tuple[bytes, str, list[memoryview]]:
    """``(rest, id, raw_input_contents)``: the serialized request without its id and raw
    contents (a valid ModelInferRequest itself), the id (the last one, as protobuf reads it),
    and views of the raw contents in order. Raises DecodeError on a malformed message."""
    view = memoryview(data)
    end = len(data)
    pos = 0
    raws: list[memoryview] = []
    request_id = b""
    kept: list[tuple[int, int]] = []  # byte ranges of every other field, in order
    while pos < end:
        start = pos
        tag = data[pos]
        if tag < 0x80:  # every field number of ModelInferRequest fits one byte
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        wire_type = tag & 7
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("a field runs past the end of the message")
            if tag == _RAW_TAG:
                raws.append(view[pos:stop])
                pos = stop
                continue
            if tag == _ID_TAG:
                request_id = data[pos:stop]
                pos = stop
                continue
            pos = stop
        elif wire_type == 0:
            _, pos = _varint(data, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise DecodeError("a field runs past the end of the message")
        if kept and kept[-1][1] == start:
            kept[-1] = (kept[-1][0], pos)
        else:
            kept.append((start, pos))
    # Usually one or two ranges: protobuf writes fields in number order, the id (3) between the
    # model name (1) and the inputs (5), raw contents (7) last.
    rest = data[kept[0][0] : kept[0][1]] if len(kept) == 1 else b"".join([data[a:b] for a, b in kept])
    try:
        return rest, request_id.decode(), raws
    except UnicodeDecodeError:
        raise DecodeError("the request id is not valid UTF-8") from None
