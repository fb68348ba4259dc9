"""Fixtures shared by the plugin tests."""

from __future__ import annotations

import pytest

from onnxvq.plugins import native


@pytest.fixture(scope="module")
def library() -> str:
    """Path of the native ORT custom-op library (built if missing); skips with the reason when
    this machine cannot build it or ONNXVQ_NO_NATIVE disables it."""
    try:
        path = native.ort_library_path(build=True)
    except native.NativeBuildError as err:
        pytest.skip(f"native library unavailable: {err}")
    if path is None:
        pytest.skip("native library disabled by ONNXVQ_NO_NATIVE")
    return path
