"""The student kit works when set up exactly as its README says, in a fresh virtual environment.

Slow (several minutes, ~6 GB of disk while it runs): it builds the student zip, unzips it, runs the
README's "Setup" block (python -m venv, pip install -r requirements.txt) with a bare Python, then
the README's test command on the stubs and on the reference, and a two-step training run. The
venv is deleted afterwards. pip's cache is reused where it has the wheels. The packages come from
PyPI itself: machine-wide pip settings (PIP_CONFIG_FILE, find-links) are switched off so that a
local wheel (e.g. a CPU-only torch) cannot stand in for what students get.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the release package, also under a bare `pytest`

from release import build, gates  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def fenced_block(readme, heading):
    """The first ```bash block after the `## heading` line of the README."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)^```bash\n(.*?)^```", readme,
                      re.M | re.S)
    assert match, f"the kit README has no ```bash block under '## {heading}'"
    return match.group(2)


def commands(block):
    """The command lines of a bash block, without comments or blank lines."""
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def pypi_reachable():
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
        return True
    except OSError:
        return False


def run(script, cwd, env, timeout):
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def tail(proc, n=40):
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-n:])


def build_kit(dest):
    """The student zip as `make release` builds it (without the gates), unzipped into dest."""
    manifest = build.load_manifest(ROOT / "release" / "manifest.toml")
    assignment = build.build_assignment(ROOT, manifest)
    entries = build.student_entries(ROOT, manifest, assignment.files)
    build.write_zip(dest.parent / "student.zip", entries)
    return gates.unzip(dest.parent / "student.zip", dest)


def test_student_kit_installs_and_runs_as_its_readme_says():
    if not pypi_reachable():
        pytest.skip("pypi.org cannot be reached: the kit install needs the package index")
    with tempfile.TemporaryDirectory(prefix="kit-install-") as scratch:
        scratch = Path(scratch)
        kit = build_kit(scratch / "kit")
        readme = (kit / "README.md").read_text()
        setup = fenced_block(readme, "Setup")
        testing = commands(fenced_block(readme, "Testing your code"))[0]
        assert "requirements.txt" in setup and "venv" in setup, setup
        assert testing == "python -m pytest tests_public", (
            f"the README's first test command is {testing!r}; this test expects the interpreter "
            "of the venv to run pytest (a bare `pytest` can be one from outside the venv)")

        # A student's shell: `python` is a plain interpreter, nothing of ours is active.
        bin_dir = scratch / "bin"
        bin_dir.mkdir()
        (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DDPM_SUBMISSION")
               and not k.startswith("PYTEST_")}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
                   PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="",
                   PIP_DISABLE_PIP_VERSION_CHECK="1")

        proc, seconds = run(f"set -euo pipefail\n{setup}", kit, env, timeout=3000)
        assert proc.returncode == 0, f"the README's setup failed:\n{tail(proc)}"
        size = subprocess.run(["du", "-sm", str(kit / ".venv")], capture_output=True, text=True)
        print(f"\nkit setup: {seconds:.0f} s, venv {size.stdout.split()[0]} MB")
        assert (kit / ".venv" / "bin" / "pytest").exists(), "pytest is not installed in the venv"
        activate = "source .venv/bin/activate\n"

        # The stubs: every public test runs and fails saying "not implemented".
        proc, seconds = run(activate + testing + " -q -p no:cacheprovider", kit, env, 600)
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        print(f"public tests on the stubs: {seconds:.0f} s: {summary}")
        assert proc.returncode == 1, f"expected failures on the stubs:\n{tail(proc)}"
        assert re.search(r"\d+ failed", summary) and "passed" not in summary, tail(proc)
        assert "not implemented" in proc.stdout, tail(proc)

        # Finished parts 1 and 2: every public test passes.
        for name in ("diffusion.py", "binary_diffusion.py"):
            shutil.copy(ROOT / "solutions" / name, kit / "assignment" / name)
        proc, seconds = run(activate + testing + " -q -p no:cacheprovider", kit, env, 600)
        print(f"public tests on the reference: {seconds:.0f} s: {tail(proc, 1)}")
        assert proc.returncode == 0, f"the reference fails the public tests in the kit:\n{tail(proc)}"

        # main.py runs with what requirements.txt installs (two steps, tiny model).
        proc, seconds = run(
            activate + "cd assignment && python main.py --help >/dev/null && python main.py "
            "--train_steps 2 --save_and_sample_every 2 --num_samples 4 --batch_size 4 "
            "--image_size 8 --unet_dim_mults 1 2 --time_steps 5 --threads 1 "
            "--save_folder results", kit, env, 600)
        print(f"main.py, two training steps: {seconds:.0f} s")
        assert proc.returncode == 0, f"main.py failed in the installed kit:\n{tail(proc)}"
        results = kit / "assignment" / "results"
        assert (results / "model-2.pt").is_file() and (results / "sample-2.png").is_file(), (
            sorted(p.name for p in results.iterdir()))
