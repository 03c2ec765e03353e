"""solutions/run_in_colab.ipynb: valid, up to date, and its commands use flags that exist."""

import ast
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "solutions" / "run_in_colab.ipynb"
MAIN = ROOT / "solutions" / "main.py"

sys.path.insert(0, str(ROOT))
from release import colab_notebook  # noqa: E402


@functools.cache
def shell_commands():
    """Every `!command` of the notebook's code cells, as IPython would run it (one string each)."""
    from IPython.core.inputtransformer2 import TransformerManager

    nb = nbformat.read(NOTEBOOK, as_version=4)
    commands = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        python = TransformerManager().transform_cell(cell.source)
        for node in ast.walk(ast.parse(python, filename=cell.id)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "system"):
                commands.append(node.args[0].value)
    return commands


def commands_of(program):
    """Argument lists (after `python <program>`) of the notebook's commands running program."""
    found = []
    for command in shell_commands():
        words = shlex.split(command)
        if words[:2] == ["python", program]:
            found.append(words[2:])
    return found


def load_script(path):
    """A script of data_scripts/ as a module (they are run as files, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flags_in(help_text):
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*", help_text))


def help_flags(script, cwd):
    """The flags `python <script> --help` lists."""
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return flags_in(result.stdout)


def test_committed_notebook_is_valid_nbformat_4():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def test_committed_notebook_is_what_the_generator_builds(tmp_path):
    fresh = colab_notebook.build(tmp_path / "fresh.ipynb")
    assert fresh.read_bytes() == NOTEBOOK.read_bytes(), (
        "solutions/run_in_colab.ipynb is stale: run `python -m release.colab_notebook`")
    again = colab_notebook.build(tmp_path / "again.ipynb")
    assert again.read_bytes() == fresh.read_bytes()


def test_every_code_cell_is_valid_ipython():
    from IPython.core.inputtransformer2 import TransformerManager

    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
        if cell.cell_type == "code":
            compile(TransformerManager().transform_cell(cell.source), cell.id, "exec")


def test_notebook_runs_the_data_script_with_flags_it_accepts():
    (args,) = commands_of("data_scripts/download_afhq.py")
    accepted = help_flags(ROOT / "data_scripts" / "download_afhq.py", ROOT)
    assert {a for a in args if a.startswith("--")} <= accepted


@pytest.mark.skipif(not MAIN.is_file(), reason="solutions/main.py is not written yet")
def test_notebook_main_py_commands_use_only_flags_main_accepts():
    from main import build_parser  # solutions/, on sys.path via conftest

    # The text `python main.py --help` prints, without paying for another torch import.
    accepted = flags_in(build_parser().format_help())
    runs = commands_of("main.py")
    assert len(runs) == 2  # train, then --visualize from the final checkpoint
    for args in runs:
        unknown = {a for a in args if a.startswith("--")} - accepted
        assert not unknown, f"main.py has no flags {sorted(unknown)}"


@pytest.mark.skipif(not MAIN.is_file(), reason="solutions/main.py is not written yet")
def test_notebook_trains_with_the_handout_colab_configuration():
    from main import build_parser  # solutions/, on sys.path via conftest

    (train,) = [args for args in commands_of("main.py") if "--visualize" not in args]
    # {SAVE_FOLDER} is filled in by IPython; any path will do for parsing.
    args = build_parser().parse_args([a.replace("{SAVE_FOLDER}", "results") for a in train])
    assert (args.dataset, args.data_class, args.image_size, args.batch_size) == ("afhq", "cat", 32, 32)
    assert (args.train_steps, args.time_steps, args.unet_dim) == (10000, 50, 16)
    assert list(args.unet_dim_mults) == [1, 2, 4, 8]
    assert (args.learning_rate, args.save_and_sample_every, args.fid) == (1e-3, 1000, True)
    # Where the notebook's data command writes (kit root) is where training reads (assignment/).
    (data_args,) = commands_of("data_scripts/download_afhq.py")
    data = load_script(ROOT / "data_scripts" / "download_afhq.py").parse_args(data_args)
    written = data.out.resolve() / "train" / data.data_class
    read = (ROOT / "assignment" / args.data_path / args.data_class).resolve()
    assert read == written
