"""Public tests: which diffusion.py they test, and the shared fixtures.

    pytest tests_public                          # tests ../assignment/diffusion.py (the kit layout)
    pytest tests_public --submission DIR         # tests DIR/diffusion.py (DIR may also be the file)
    DDPM_SUBMISSION=DIR pytest tests_public      # the same, through the environment
"""

import importlib.util
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # public_helpers

import public_helpers  # noqa: E402
from public_helpers import FIXTURES  # noqa: E402

DEFAULT_SUBMISSION = HERE.parent / "assignment"


def pytest_addoption(parser):
    parser.addoption("--submission", default=None, metavar="DIR",
                     help="folder holding the diffusion.py to test (default: env DDPM_SUBMISSION, "
                          f"else {DEFAULT_SUBMISSION})")


def _submission_file(config):
    raw = config.getoption("--submission") or os.environ.get("DDPM_SUBMISSION")
    path = Path(raw).expanduser().resolve() if raw else DEFAULT_SUBMISSION
    if path.is_file():
        return path
    if not path.is_dir():
        raise pytest.UsageError(f"submission folder {path} does not exist; pass --submission DIR "
                                f"(or set DDPM_SUBMISSION) to the folder with your diffusion.py")
    file = path / "diffusion.py"
    if not file.is_file():
        raise pytest.UsageError(f"no diffusion.py in {path}; pass --submission DIR (or set "
                                f"DDPM_SUBMISSION) to the folder with your diffusion.py")
    return file


def pytest_configure(config):
    file = _submission_file(config)
    config._ddpm_submission = file
    public_helpers.SUBMISSION = file
    # Failures are short messages (pytest.fail(..., pytrace=False)); anything unexpected gets a
    # short traceback rather than pages of source and values.
    if getattr(config.option, "tbstyle", "auto") == "auto":
        config.option.tbstyle = "short"
    # Load it under its plain name, as the homework's own modules do (`from diffusion import ...`).
    sys.path.insert(0, str(file.parent))
    sys.modules.pop("diffusion", None)
    try:
        spec = importlib.util.spec_from_file_location("diffusion", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["diffusion"] = module
        spec.loader.exec_module(module)
        if not hasattr(module, "Diffusion"):
            raise ImportError("it defines no class named Diffusion")
        config._ddpm_module, config._ddpm_import_error = module, None
    except BaseException as err:  # a SyntaxError or even SystemExit must not stop collection
        sys.modules.pop("diffusion", None)
        lines = traceback.format_exception_only(type(err), err)
        config._ddpm_module, config._ddpm_import_error = None, "".join(lines).strip()


def pytest_report_header(config):
    return f"submission: {config._ddpm_submission}"


# The handout's order: each file's functions build on the previous file's, so the first failure
# shown is the one to fix first.
FILE_ORDER = ["test_public_schedule.py", "test_public_training.py", "test_public_sampling.py"]


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)
    items.sort(key=rank)  # stable: the order within a file is kept


def pytest_pyfunc_call(pyfuncitem):
    """When diffusion.py does not import, every test fails with that error (not a setup error):
    in full in the first test, in one line in the others."""
    config = pyfuncitem.config
    if config._ddpm_module is None:
        error = config._ddpm_import_error
        kind = error.splitlines()[-1].split(":")[0] if error else "error"
        pytest.fail(public_helpers.shown_once(
            "import", f"your diffusion.py does not import: {error}\n  ({config._ddpm_submission})",
            f"your diffusion.py does not import ({kind})"), pytrace=False)


@pytest.fixture(scope="session")
def ddpm(pytestconfig):
    """The submission's diffusion module (None when it does not import; see pytest_pyfunc_call)."""
    return pytestconfig._ddpm_module


@pytest.fixture(scope="session")
def ref():
    """Reference inputs and outputs written by fixtures/generate.py."""
    with np.load(FIXTURES) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
