"""Fixtures shared by the test files."""

import warnings

import pytest


@pytest.fixture
def quiet_reference_warning():
    """Without compiled kernels the op says once that it runs the reference; irrelevant where the
    test is about the module, not the backend (test files opt in with ``pytestmark``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lwvd_cuda: running the pure-PyTorch reference")
        yield
