"""``pip install .`` and ``pip install -e .`` both make ``twistd`` list pbxd.

Each case installs a copy of the project into a throwaway virtualenv that
borrows the test environment's packages, so only pbxd itself is built and
installed (pip fetches setuptools for the isolated build from its index or
cache). twistd then runs from an unrelated directory.

The borrowing is a .pth file listing the test environment's site directories
rather than --system-site-packages, which would borrow from the base Python
instead when the tests themselves run in a virtualenv. Paths that .pth files
in those directories add (another editable pbxd, say) are not borrowed.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["pyproject.toml", "setup.cfg", "README.md", "pbxd", "twisted"]


def run(*args: str | Path, cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project, with a stale dropin.cache that must not be installed."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache")
            )
        else:
            shutil.copy(source, copy / name)
    (copy / "twisted" / "plugins" / "dropin.cache").write_bytes(b"stale")
    return copy


def borrowed_site_dirs() -> list[str]:
    dirs = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [directory for directory in dirs if os.path.isdir(directory)]


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_twistd_lists_pbxd_after_pip_install(tmp_path: Path, project: Path, editable: bool) -> None:
    venv = tmp_path / "venv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(run(python, "-c", purelib, cwd=elsewhere).strip())
    assert site_packages.is_relative_to(venv)
    # Sorts after setuptools' __editable__ .pth, so an editable pbxd comes first on the path.
    (site_packages / "_borrowed.pth").write_text("\n".join(borrowed_site_dirs()) + "\n")
    # The borrowed pip installs into the venv it runs in.
    run(python, "-m", "pip", "install", "-q", *(["-e"] if editable else []), project, cwd=tmp_path)

    # Nothing of Twisted's own package is shipped, and no plugin cache either.
    assert not (site_packages / "twisted" / "__init__.py").exists()
    assert not (site_packages / "twisted" / "plugins" / "dropin.cache").exists()

    twistd = "from twisted.scripts.twistd import run; run()"
    help_text = run(python, "-c", twistd, "--help", cwd=elsewhere)
    assert re.search(r"^\s+pbxd\s+SIP/RTP PBX daemon", help_text, re.MULTILINE), help_text

    # ...and it is this installation that twistd found, not another one on the path.
    files = "import pbxd, twisted.plugins.pbxd_plugin as p; print(pbxd.__file__, p.__file__)"
    where = run(python, "-c", files, cwd=elsewhere).split()
    home = project if editable else site_packages
    assert [Path(file) for file in where] == [
        home / "pbxd" / "__init__.py",
        home / "twisted" / "plugins" / "pbxd_plugin.py",
    ]

    # The console script runs twistd -n pbxd with its options.
    usage = run(venv / "bin" / "pbxd", "--help", cwd=elsewhere)
    assert "--sip-port=" in usage and "--log-format=" in usage
