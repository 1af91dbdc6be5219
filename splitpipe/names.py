"""The names a served model may have: what an export writes and what the server accepts.

Open Inference Protocol clients put the name in URLs and Triton uses it as a folder name, so
it is kept to 1-128 letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
Standard library only (the server and the agent import it).
"""

from __future__ import annotations

import re

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RULE = "1-128 of letters, digits, '.', '_', '-', starting with a letter or digit"


def valid_model_name(name: object) -> bool:
    return isinstance(name, str) and MODEL_NAME.match(name) is not None
