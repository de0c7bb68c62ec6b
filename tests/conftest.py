from pathlib import Path

import pytest

from hetserve.catalog import load_catalog

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()
