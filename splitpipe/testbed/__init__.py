"""The emulated testbed: network namespaces, link shaping, delay injection, device CPU throttling.

See docs/testbed.md. The public API:

- :class:`Testbed` builds (``up``), changes (``set``, ``set_rate``), measures (``measure``) and
  removes (``down``) a testbed, and runs processes on either side (``popen``, ``run``);
- :class:`TestbedOptions` and :class:`LinkMeasurement` are its frozen option and result types;
- :func:`parse_rate`, :func:`parse_duration_ms` (from :mod:`splitpipe.units`, shared with the
  planner) and :func:`parse_share` read CLI-style values.
"""

from splitpipe.testbed.link import TestbedError
from splitpipe.testbed.measure import LinkMeasurement
from splitpipe.testbed.options import (
    DEVICE_ADDR,
    SERVER_ADDR,
    SIDES,
    TestbedOptions,
    parse_share,
)
from splitpipe.testbed.testbed import Testbed, TestbedStatus, list_testbeds, require_root
from splitpipe.units import parse_duration_ms, parse_rate

__all__ = [
    "DEVICE_ADDR",
    "SERVER_ADDR",
    "SIDES",
    "LinkMeasurement",
    "Testbed",
    "TestbedError",
    "TestbedOptions",
    "TestbedStatus",
    "list_testbeds",
    "parse_duration_ms",
    "parse_rate",
    "parse_share",
    "require_root",
]
