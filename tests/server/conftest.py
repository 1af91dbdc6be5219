"""Fixtures for server tests: tiny export directories and a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitpipe.server import ServerOptions, ServerThread
from tests.server import tiny_tails


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        "relu-mean": tiny_tails.relu_mean(root / "relu-mean"),
        "gemm": tiny_tails.fixed_gemm(root / "gemm"),
        "two-inputs": tiny_tails.two_inputs(root / "two-inputs"),
    }


@pytest.fixture(scope="module")
def server(exports: dict[str, Path]) -> Iterator[ServerThread]:
    """All tiny tails on one server, batching on (up to 8 rows, 2 ms)."""
    with ServerThread(list(exports.values()), ServerOptions(max_batch=8, batch_timeout_us=2000)) as running:
        yield running
