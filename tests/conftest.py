"""Test-wide set-up: Triton's interpreter (must be set before any kernel module is imported),
a small thread count (CI has 2 cores), fixed seeds, and the Hypothesis profiles of the fuzz tests
(tests/fuzz/): `ci`, the default (derandomized: the same examples every run, a bounded count, so the
fuzz folder runs in about a minute on 2 cores), and `long` (many random examples, for a local hunt:
`python -m pytest tests/fuzz --hypothesis-profile long`)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                   HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, database=None, max_examples=60, print_blob=True, **_FUZZ)
settings.register_profile("long", max_examples=3000, print_blob=True, **_FUZZ)
settings.load_profile("ci")   # --hypothesis-profile NAME (Hypothesis' pytest plugin) loads another

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
    """Root holding wsolevaluation's real CUB metadata (not in the repository): CUB_METADATA, i.e.
    `shared/data/wsolevaluation-metadata` in the folder that holds the checkout."""
    if not os.path.isdir(os.path.join(CUB_METADATA, "CUB")):
        pytest.skip(f"wsolevaluation's CUB metadata is not at {CUB_METADATA}")
    return CUB_METADATA


# A small builtin-masks set (OpenImages' layout: masks, ignore regions), generated once per session for
# the tests that read it (tests/data/test_builtin_masks.py, tests/test_pxap.py); none of them writes in it.
TINY_MASKS = dict(num_train=24, num_val=10, num_test=10, min_size=72, max_size=96)


@pytest.fixture(scope="session")
def tiny_masks(tmp_path_factory):
    from wsol_fast.data import builtin_masks
    root = str(tmp_path_factory.mktemp("tiny_masks"))
    builtin_masks.generate(root, seed=0, progress=False, **TINY_MASKS)
    return root
