"""Bit packing of 4- and 2-bit codes, little end first: element i of a byte group sits in bits
``bits*i .. bits*i + bits-1`` of its byte. An element count that does not fill the last byte
leaves its high bits zero; the unpacker checks that they are (a cheap integrity check).

``pack``/``unpack`` are the fast paths (the compiled kernels when built, else vectorised numpy);
``pack_ref``/``unpack_ref`` the obvious pure-Python loops the tests compare them with.
"""

from __future__ import annotations

import numpy as np

from splitpipe.errors import CodecError
from splitpipe.kernels import quant


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> np.ndarray | bytes:
    """uint8 codes (each < 2**bits) -> packed uint8 bytes."""
    if bits == 8:
        return codes.reshape(-1)
    if quant.C is not None:
        packed: bytes = quant.C.pack(np.ascontiguousarray(codes), bits)
        return packed
    per = 8 // bits
    flat = codes.reshape(-1)
    n = flat.size
    if n % per:
        flat = np.concatenate([flat, np.zeros(per - n % per, dtype=np.uint8)])
    groups = flat.reshape(-1, per)
    out = groups[:, 0].copy()
    for i in range(1, per):
        out |= groups[:, i] << np.uint8(bits * i)
    return out


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Packed uint8 bytes -> ``count`` uint8 codes; CodecError if padding bits are set."""
    if bits == 8:
        return packed[:count]
    per = 8 // bits
    if packed.size != packed_size(count, bits):
        raise CodecError(f"packed stream is {packed.size} bytes, expected {packed_size(count, bits)}")
    if quant.C is not None:
        codes = np.empty(count, np.uint8)
        if not quant.C.unpack(packed, bits, codes):
            raise CodecError("packed stream has non-zero padding bits after the last element")
        return codes
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.size, per), dtype=np.uint8)
    for i in range(per):
        np.right_shift(packed, np.uint8(bits * i), out=out[:, i])
        out[:, i] &= mask
    flat = out.reshape(-1)
    if flat.size > count and flat[count:].any():
        raise CodecError("packed stream has non-zero padding bits after the last element")
    return flat[:count]


def pack_ref(codes: list[int], bits: int) -> bytes:
    per = 8 // bits
    out = bytearray()
    for start in range(0, len(codes), per):
        byte = 0
        for i, c in enumerate(codes[start : start + per]):
            if not 0 <= c < (1 << bits):
                raise ValueError(f"code {c} does not fit {bits} bits")
            byte |= c << (bits * i)
        out.append(byte)
    return bytes(out)


def unpack_ref(data: bytes, bits: int, count: int) -> list[int]:
    per = 8 // bits
    if len(data) != packed_size(count, bits):
        raise CodecError(f"packed stream is {len(data)} bytes, expected {packed_size(count, bits)}")
    codes = [(byte >> (bits * i)) & ((1 << bits) - 1) for byte in data for i in range(per)]
    if any(codes[count:]):
        raise CodecError("packed stream has non-zero padding bits after the last element")
    return codes[:count]
