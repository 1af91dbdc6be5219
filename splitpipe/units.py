"""Link rates and durations as users write them, shared by every command that takes one
(``plan --link``, ``testbed --rate/--rtt``, ``bench sweep --links``), so that one string means
the same everywhere.

Rates are bits per second: ``bit``, ``kbit``, ``mbit``, ``gbit``, or a plain number of Mbit/s.
Byte-looking units (``mbps``, ``kbps``, ``MB``) are refused rather than guessed: ``tc`` reads
``mbps`` as megabytes per second, other tools as megabits, and the two differ eightfold.
Durations: ``us``, ``ms``, ``s``, or a plain number of milliseconds.
"""

from __future__ import annotations

import re

from splitpipe.errors import SplitpipeError

_RATE_UNITS = {"bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_BYTE_UNITS = re.compile(r"[kmg]?(bps|b|byte|bytes)", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """'10mbit', '500kbit', '1gbit' or a plain number of Mbit/s -> Mbit/s (>= 0)."""
    m = re.fullmatch(_NUM + r"\s*([a-zA-Z]*)", text.strip())
    unit = m.group(2).lower() if m else ""
    if m and unit and unit not in _RATE_UNITS and _BYTE_UNITS.fullmatch(unit):
        raise SplitpipeError(
            f"bad link rate {text!r}: {m.group(2)!r} is ambiguous (tc reads mbps as megabytes per "
            f"second); accepted: a number with kbit, mbit or gbit (e.g. {m.group(1)}mbit), or plain Mbit/s"
        )
    if not m or (unit and unit not in _RATE_UNITS):
        raise SplitpipeError(
            f"bad link rate {text!r}; accepted: a number with kbit, mbit or gbit (e.g. 10mbit), or plain Mbit/s"
        )
    return float(m.group(1)) * _RATE_UNITS.get(unit, 1.0)


def parse_duration_ms(text: str) -> float:
    """'40ms', '0.04s', '500us' or a plain number of milliseconds -> ms (>= 0)."""
    m = re.fullmatch(_NUM + r"\s*([a-zA-Z]*)", text.strip())
    unit = m.group(2).lower() if m else ""
    if not m or (unit and unit not in _TIME_UNITS):
        raise SplitpipeError(
            f"bad duration {text!r}; accepted: a number with us, ms or s (e.g. 40ms), or plain ms"
        )
    return float(m.group(1)) * _TIME_UNITS.get(unit, 1.0)
