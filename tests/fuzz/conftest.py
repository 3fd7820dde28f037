"""The fuzz tests' shared data: one small built-in dataset (its metadata and JPEGs are the real files the
mutations start from)."""
import pytest

from wsol_fast.data import builtin

TINY = dict(num_train=12, num_val=6, num_test=4, min_size=40, max_size=48)


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fuzz_builtin"))
    builtin.generate(root, seed=0, progress=False, **TINY)
    return root
