"""Shared fixtures."""

import pytest

import bebr


@pytest.fixture(params=bebr.simd_levels())
def level(request):
    """Run the test at one available SIMD level, restoring the previous level afterwards."""
    before = bebr.simd_level()
    bebr.set_simd_level(request.param)
    yield request.param
    bebr.set_simd_level(before)
