"""Codec names: parsing, validation and the canonical spelling.

Grammar (documented in docs/codecs.md)::

    NAME    := BASE [MODS] [ENTROPY] | IMAGE
    BASE    := raw | fp16 | int8 | uint4 | uint2
    MODS    := /sym (int8 only) and/or /ch (int8, uint4, uint2); canonical order /sym/ch
    ENTROPY := +zstd | +zstd:LEVEL (LEVEL 1..22, default 3) | +lz4
    IMAGE   := jpeg | jpeg:QUALITY (QUALITY 1..100, default 90)

The canonical spelling drops a default level: ``int8/ch+zstd:3`` is ``int8/ch+zstd`` and
``jpeg:90`` is ``jpeg``. ``jpeg`` quantizes per channel to uint8 and JPEG-codes each image of an
NCHW batch: it is a quantizer (it has scales) that is always per channel and already entropy
coded, so it takes no modifiers and no lossless stage.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from splitpipe.errors import SplitpipeError

BASES = ("raw", "fp16", "int8", "uint4", "uint2", "jpeg")
ENTROPY = ("zstd", "lz4")
ZSTD_DEFAULT_LEVEL = 3
ZSTD_LEVELS = range(1, 23)
JPEG_DEFAULT_QUALITY = 90
JPEG_QUALITIES = range(1, 101)

#: bits per stored code for the quantizing bases (jpeg quantizes to uint8 before JPEG coding)
BITS = {"int8": 8, "uint4": 4, "uint2": 2, "jpeg": 8}

ACCEPTED_FORMS = (
    "raw, fp16, int8, int8/ch, int8/sym, int8/sym/ch, uint4, uint4/ch, uint2, uint2/ch, "
    "each optionally followed by +zstd, +zstd:LEVEL (1-22) or +lz4, e.g. int8/ch+zstd; "
    "and jpeg or jpeg:QUALITY (1-100, default 90) for NCHW images with 1 or 3 channels"
)

_NAME = re.compile(
    r"^(?P<base>[a-z0-9]+)(?::(?P<quality>-?\d+))?(?P<mods>(?:/[a-z]+)*)"
    r"(?:\+(?P<ent>[a-z0-9]+)(?::(?P<level>-?\d+))?)?$"
)


@dataclass(frozen=True)
class CodecSpec:
    """A parsed codec name."""

    base: str
    symmetric: bool = False
    per_channel: bool = False
    entropy: str | None = None
    level: int | None = None
    quality: int | None = None  # jpeg only

    @functools.cached_property
    def quantized(self) -> bool:
        """Has scales and zero points (and so accepts a calibration)."""
        return self.base in BITS

    @functools.cached_property
    def plain(self) -> bool:
        """The tensor's own bytes (``raw``, no lossless stage): nothing for a receiver to decode."""
        return self.base == "raw" and self.entropy is None

    @functools.cached_property
    def image(self) -> bool:
        """An image codec: NCHW tensors with 1 or 3 channels only."""
        return self.base == "jpeg"

    @functools.cached_property
    def bits(self) -> int:
        return BITS[self.base]

    @property
    def quant_name(self) -> str:
        """The name without its entropy stage: what a calibration applies to."""
        if self.base == "jpeg":
            return "jpeg" if self.quality == JPEG_DEFAULT_QUALITY else f"jpeg:{self.quality}"
        name = self.base
        if self.symmetric:
            name += "/sym"
        if self.per_channel:
            name += "/ch"
        return name

    @functools.cached_property
    def name(self) -> str:
        name = self.quant_name
        if self.entropy == "zstd":
            name += "+zstd" if self.level in (None, ZSTD_DEFAULT_LEVEL) else f"+zstd:{self.level}"
        elif self.entropy == "lz4":
            name += "+lz4"
        return name

    @functools.cached_property
    def qrange(self) -> tuple[int, int]:
        """The range of stored codes."""
        if self.base == "int8":
            return (-128, 127) if self.symmetric else (0, 255)
        return (0, (1 << self.bits) - 1)


def _bad(name: object, why: str = "") -> SplitpipeError:
    extra = f" ({why})" if why else ""
    return SplitpipeError(f"unknown codec {name!r}{extra}; accepted: {ACCEPTED_FORMS}")


def parse_name(name: str) -> CodecSpec:
    """Parse and validate a codec name; raise SplitpipeError listing the accepted forms."""
    if not isinstance(name, str):
        raise _bad(name, "not a string")
    return _parse(name)


@functools.lru_cache(maxsize=256)  # decode parses the name of every payload; errors are not cached
def _parse(name: str) -> CodecSpec:
    if len(name) > 64:
        raise _bad(name[:64] + "...", "too long")
    m = _NAME.match(name.strip().lower())
    if not m:
        raise _bad(name)
    base = m.group("base")
    if base not in BASES:
        raise _bad(name, f"base must be one of {', '.join(BASES)}")
    mods = [p for p in m.group("mods").split("/") if p]
    quality_s = m.group("quality")
    if base == "jpeg":
        return _parse_jpeg(name, quality_s, mods, m.group("ent"))
    if quality_s is not None:
        raise _bad(name, "only jpeg takes a quality (jpeg:QUALITY)")
    if len(set(mods)) != len(mods) or any(p not in ("sym", "ch") for p in mods):
        raise _bad(name, "modifiers are /sym and /ch, each at most once")
    symmetric, per_channel = "sym" in mods, "ch" in mods
    if base in ("raw", "fp16") and mods:
        raise _bad(name, f"{base} takes no /sym or /ch")
    if symmetric and base != "int8":
        raise _bad(name, "/sym exists for int8 only")
    entropy, level_s = m.group("ent"), m.group("level")
    level: int | None = None
    if entropy is not None and entropy not in ENTROPY:
        raise _bad(name, f"lossless stage must be one of {', '.join('+' + e for e in ENTROPY)}")
    if level_s is not None:
        if entropy != "zstd":
            raise _bad(name, "only +zstd takes a level")
        level = int(level_s)
        if level not in ZSTD_LEVELS:
            raise _bad(name, "zstd level must be 1..22")
    elif entropy == "zstd":
        level = ZSTD_DEFAULT_LEVEL
    return CodecSpec(base, symmetric, per_channel, entropy, level)


def _parse_jpeg(name: str, quality_s: str | None, mods: list[str], entropy: str | None) -> CodecSpec:
    if mods:
        raise _bad(name, "jpeg takes no /sym or /ch: it is always per channel")
    if entropy is not None:
        raise _bad(name, f"jpeg is entropy coded already; +{entropy} does not apply to it")
    quality = JPEG_DEFAULT_QUALITY
    if quality_s is not None:
        quality = int(quality_s)
        if quality not in JPEG_QUALITIES:
            raise _bad(name, "jpeg quality must be 1..100")
    return CodecSpec("jpeg", per_channel=True, quality=quality)


def codec_names(*, entropy: bool = True, image: bool = False) -> list[str]:
    """Every canonical codec name (with the default zstd level), smallest family first.

    ``image=True`` appends ``jpeg`` (quality 90), which only takes NCHW tensors with 1 or 3
    channels, so it is left out of lists meant for any tensor."""
    quant = [
        "raw",
        "fp16",
        "int8",
        "int8/ch",
        "int8/sym",
        "int8/sym/ch",
        "uint4",
        "uint4/ch",
        "uint2",
        "uint2/ch",
    ]
    names = quant if not entropy else [q + e for q in quant for e in ("", "+zstd", "+lz4")]
    return [*names, "jpeg"] if image else names
