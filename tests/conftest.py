"""Test set-up: import the project from this checkout, and keep Paddle's start-up noise out."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Paddle warns on import that it found no ccache (it only matters for building C++ extensions).
CCACHE_WARNING = r".*ccache.*"
warnings.filterwarnings("ignore", message=CCACHE_WARNING)


def pytest_configure(config: pytest.Config) -> None:
    # pytest re-applies its own filters around each test, so register the filter there too.
    config.addinivalue_line("filterwarnings", f"ignore:{CCACHE_WARNING}:UserWarning")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback for the whole session (tests/s3_server.py), started on first use."""
    from tests.s3_server import running_s3_server

    with running_s3_server() as server:
        yield server
