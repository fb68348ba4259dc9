"""The README's validation commands, run verbatim on the shared model and images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tests/test_readme.py runs this block"


POLYGRAPHY_MARKER = "<!-- tests/test_readme.py runs this block verbatim in a folder holding a tiny"


def readme_block(marker: str = MARKER) -> str:
    text = README.read_text()
    start = text.index("```bash", text.index(marker)) + len("```bash")
    return text[start:text.index("```", start)]


def run_block(block: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               COLUMNS="120")
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_readme_plain_polygraphy_commands_run(tmp_path):
    """The Polygraphy extension: plain `polygraphy run` on a --pts --lis model, ORT with the
    custom ops and --pluginref (numpy references) against it."""
    from importlib import metadata

    if not any(p.name == "onnxvq" for p in metadata.entry_points(group="polygraphy.run.plugins")):
        pytest.skip("Polygraphy extension not in the installed metadata; re-run "
                    "`pip install --no-deps -e .`")
    from onnxvq.core.graph import save_model
    from onnxvq.models.tiny_vit import build_tiny_vit

    save_model(build_tiny_vit(), tmp_path / "vit.onnx")
    done = run_block(readme_block(POLYGRAPHY_MARKER), tmp_path, 600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert text.count("PASSED | Runtime") == 2
    assert "pluginref-runner" in text and "Pass Rate: 100.00%" in text


@pytest.mark.realdata
@pytest.mark.slow
def test_readme_validation_commands_run(shared_data, tmp_path):
    (tmp_path / "vit_cifar10.onnx").symlink_to(shared_data / "models" / "vit_cifar10.onnx")
    (tmp_path / "cifar10").symlink_to(shared_data / "cifar10")
    done = run_block(readme_block(), tmp_path, 900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASS" in done.stdout  # compare's verdict
    assert "PASSED" in done.stdout + done.stderr  # polygraphy's
    for name in ("vit_cifar10.int8.onnx", "vit_cifar10.int8.json", "vit_cifar10.int8.html",
                 "i.json", "o.json"):
        assert (tmp_path / name).stat().st_size > 0, name
