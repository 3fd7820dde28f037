"""Test-wide set-up: Triton's interpreter (must be set before any kernel module is imported),
a small thread count (CI has 2 cores), and fixed seeds."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
CUB_METADATA = os.path.join(SHARED, "data", "wsolevaluation-metadata")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def cub_metadata_root():
    """Root holding the real CUB metadata of the protocol (../shared/data/wsolevaluation-metadata)."""
    if not os.path.isdir(os.path.join(CUB_METADATA, "CUB")):
        pytest.skip(f"the shared CUB metadata is not at {CUB_METADATA} (../shared/data beside the checkout)")
    return CUB_METADATA
