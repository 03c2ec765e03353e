"""The files of dist/autograder.zip (Gradescope): source path in the repo -> path in the zip.

Gradescope unpacks the zip into /autograder/source and runs setup.sh (once, building the image)
and run_autograder (per submission) from the zip's root. The layout under source/ mirrors the
repo, so autograder/config.py finds everything relative to its own package. The list is built
from GRADED_MODULES: a new graded module brings its hidden tests, rubric, reference and given
files with it. Nothing here is shipped to students.
"""

import importlib.util
from pathlib import Path

_HERE = Path(__file__).resolve().parent

ENGINE = ("__init__.py", "__main__.py", "checks.py", "config.py", "grade.py", "gradebook.py",
          "notebook.py", "package.py", "report.py", "runtime/__init__.py", "runtime/sandbox.py",
          "runtime/worker.py", "runtime/wire.py", "runtime/probekit.py", "runtime/memory.py")


def _graded_modules():
    spec = importlib.util.spec_from_file_location("_autograder_config_for_package",
                                                  _HERE / "config.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    return config.GRADED_MODULES


def files():
    """{repo path: zip path}, deterministic."""
    out = {
        "autograder/gradescope/setup.sh": "setup.sh",
        "autograder/gradescope/run_autograder": "run_autograder",
        "requirements.txt": "requirements.txt",
    }
    for name in ENGINE:
        out[f"autograder/{name}"] = f"autograder/{name}"
    out["tests_hidden/__init__.py"] = "tests_hidden/__init__.py"
    for m in _graded_modules():
        for path in (f"{m.folder}/__init__.py", m.probes, m.tests, m.rubric_path, m.reference,
                     *m.given):
            out[path] = path
    return dict(sorted(out.items()))


FILES = files()
