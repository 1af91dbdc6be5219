"""Subcommands of the ``splitpipe`` CLI, one module each.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
handler ``(args) -> int``. Modules import only the standard library at top level, so that
``splitpipe --help`` and the agent start on a device without the heavy extras.
"""

#: modules in the order ``splitpipe --help`` lists them
COMMANDS: list[str] = [
    "plan",
    "export",
    "compile",
    "bottleneck",
    "devices",
    "serve",
    "triton_repo",
    "profile",
    "testbed",
    "agent",
    "report",
    "demo",
    "bench",
]
