"""Public tests: which diffusion.py / binary_diffusion.py they test, and the shared fixtures.

    pytest tests_public                          # tests ../assignment/ (the kit layout)
    pytest tests_public --submission DIR         # tests DIR/diffusion.py and DIR/binary_diffusion.py
    pytest tests_public --submission FILE        # one file (of any name); the other part's tests fail
    DDPM_SUBMISSION=DIR pytest tests_public      # the same, through the environment

Part 1's tests (test_public_schedule/sampling/training.py) use the fixture `ddpm`, part 2's
(test_public_binary.py) the fixture `bdm`. A part whose file is missing or does not import fails
its own tests only, each with that reason.
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


# The graded files: module name -> (class it must define, the public test files of that part).
PARTS = {
    "diffusion": ("Diffusion", "part 1"),
    "binary_diffusion": ("BinaryDiffusion", "part 2"),
}
BINARY_TESTS = ("test_public_binary",)  # test modules of part 2; every other one is part 1's


def pytest_addoption(parser):
    parser.addoption("--submission", default=None, metavar="DIR",
                     help="folder holding the diffusion.py / binary_diffusion.py to test (default: "
                          f"env DDPM_SUBMISSION, else {DEFAULT_SUBMISSION})")


def _submission_files(config):
    """{module name: path or None}: the files of the submission (None: not there)."""
    raw = config.getoption("--submission") or os.environ.get("DDPM_SUBMISSION")
    path = Path(raw).expanduser().resolve() if raw else DEFAULT_SUBMISSION
    if path.is_file():
        # One file of any name: part 2's if it defines BinaryDiffusion, else part 1's.
        part = ("binary_diffusion" if "class BinaryDiffusion" in path.read_text(errors="replace")
                else "diffusion")
        return {name: path if name == part else None for name in PARTS}, path.parent
    if not path.is_dir():
        raise pytest.UsageError(f"submission folder {path} does not exist; pass --submission DIR "
                                f"(or set DDPM_SUBMISSION) to the folder with your diffusion.py")
    files = {name: path / f"{name}.py" if (path / f"{name}.py").is_file() else None
             for name in PARTS}
    if not any(files.values()):
        raise pytest.UsageError(f"no diffusion.py or binary_diffusion.py in {path}; pass "
                                f"--submission DIR (or set DDPM_SUBMISSION) to the folder with "
                                f"your diffusion.py")
    return files, path


def _load(name, file):
    """(module, None) or (None, why not)."""
    if file is None:
        return None, "missing"
    sys.modules.pop(name, None)
    try:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if not hasattr(module, PARTS[name][0]):
            raise ImportError(f"it defines no class named {PARTS[name][0]}")
        return module, None
    except BaseException as err:  # a SyntaxError or even SystemExit must not stop collection
        sys.modules.pop(name, None)
        lines = traceback.format_exception_only(type(err), err)
        return None, "".join(lines).strip()


def pytest_configure(config):
    files, folder = _submission_files(config)
    config._ddpm_files, config._ddpm_folder = files, folder
    config._ddpm_submission = files["diffusion"] or files["binary_diffusion"]
    public_helpers.SUBMISSION = config._ddpm_submission
    # Failures are short messages (pytest.fail(..., pytrace=False)); anything unexpected gets a
    # short traceback rather than pages of source and values.
    if getattr(config.option, "tbstyle", "auto") == "auto":
        config.option.tbstyle = "short"
    # Load them under their plain names, as the homework's own modules do (`from diffusion import`).
    sys.path.insert(0, str(folder))
    config._ddpm_modules, config._ddpm_errors = {}, {}
    for name, file in files.items():
        config._ddpm_modules[name], config._ddpm_errors[name] = _load(name, file)
    config._ddpm_module = config._ddpm_modules["diffusion"]


def pytest_report_header(config):
    return "submission: " + ", ".join(str(f) for f in config._ddpm_files.values() if f)


def _part_of(item):
    module = item.module.__name__.rsplit(".", 1)[-1]
    return "binary_diffusion" if module.startswith(BINARY_TESTS) else "diffusion"


# The handout's order: each file's functions build on the previous file's, so the first failure
# shown is the one to fix first.
FILE_ORDER = ["test_public_schedule.py", "test_public_training.py", "test_public_sampling.py"]


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)
    items.sort(key=rank)  # stable: the order within a file is kept


def pytest_pyfunc_call(pyfuncitem):
    """When a part's file is missing or does not import, each of its tests fails with that reason
    (an import error in full in the part's first test, in one line in the others)."""
    config = pyfuncitem.config
    name = _part_of(pyfuncitem)
    error = config._ddpm_errors[name]
    if error == "missing":
        pytest.fail(f"no {name}.py in {config._ddpm_folder} ({PARTS[name][1]}; the other part's "
                    f"tests do not need it)", pytrace=False)
    if error is not None:
        kind = error.splitlines()[-1].split(":")[0] if error else "error"
        pytest.fail(public_helpers.shown_once(
            f"import {name}", f"your {name}.py does not import: {error}\n"
                              f"  ({config._ddpm_files[name]})",
            f"your {name}.py does not import ({kind})"), pytrace=False)


@pytest.fixture(scope="session")
def ddpm(pytestconfig):
    """The submission's diffusion module (None when it does not import; see pytest_pyfunc_call)."""
    return pytestconfig._ddpm_modules["diffusion"]


@pytest.fixture(scope="session")
def bdm(pytestconfig):
    """The submission's binary_diffusion module (None when missing or broken)."""
    return pytestconfig._ddpm_modules["binary_diffusion"]


@pytest.fixture(scope="session")
def ref():
    """Reference inputs and outputs written by fixtures/generate.py."""
    with np.load(FIXTURES) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
