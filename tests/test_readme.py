"""The README's validation commands, run verbatim on the shared model and images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tests/test_readme.py runs this block"


def readme_block() -> str:
    text = README.read_text()
    start = text.index("```bash", text.index(MARKER)) + len("```bash")
    return text[start:text.index("```", start)]


@pytest.mark.realdata
@pytest.mark.slow
def test_readme_validation_commands_run(shared_data, tmp_path):
    (tmp_path / "vit_cifar10.onnx").symlink_to(shared_data / "models" / "vit_cifar10.onnx")
    (tmp_path / "cifar10").symlink_to(shared_data / "cifar10")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               COLUMNS="120")
    script = "set -euo pipefail\n" + readme_block()
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASS" in done.stdout  # compare's verdict
    assert "PASSED" in done.stdout + done.stderr  # polygraphy's
    for name in ("vit_cifar10.int8.onnx", "vit_cifar10.int8.json", "vit_cifar10.int8.html",
                 "i.json", "o.json"):
        assert (tmp_path / name).stat().st_size > 0, name
