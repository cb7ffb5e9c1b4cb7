"""The README's set-up, followed in a fresh virtual environment: a `dmdnet` command that
works from any folder, with the default weights found there too.

The environment sees the installed packages (torch etc., `--system-site-packages`), and the
install runs offline (`--no-deps --no-build-isolation --no-index`): what it checks is the
project's own packaging."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
from PIL import Image
from support import REPO_ROOT


def _setup_commands() -> list[str]:
    section = (REPO_ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("pip install")]


def test_the_readme_install_gives_a_dmdnet_command_that_works_from_any_folder(tmp_path):
    assert "pip install -e ." in _setup_commands()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", "."],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)).save(elsewhere / "photo.png")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(["dmdnet", "separate", "photo.png", "--out", "out", "--device", "cpu"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote 1 of 1 images" in run.stdout and "DMDNet-Lite" in run.stdout  # the default weights
    assert (elsewhere / "out" / "transmission_layer" / "photo.png").is_file()
    module = subprocess.run(["python", "-m", "dmdnet", "--help"], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=300)
    assert module.returncode == 0 and module.stdout.startswith("usage: dmdnet"), module.stderr
