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


def parse_run(args):
    from main import build_parser  # solutions/, on sys.path via conftest

    # {SAVE_FOLDER} is filled in by IPython; any path will do for parsing.
    return build_parser().parse_args([a.replace("{SAVE_FOLDER}", "results") for a in args])


def test_notebook_main_py_commands_use_only_flags_main_accepts():
    from main import build_parser  # solutions/, on sys.path via conftest

    # The text `python main.py --help` prints, without paying for another torch import.
    accepted = flags_in(build_parser().format_help())
    runs = commands_of("main.py")
    assert len(runs) == 3  # the handout's three runs: 1000 steps, resume to 10 000, visualize
    for args in runs:
        unknown = {a for a in args if a.startswith("--")} - accepted
        assert not unknown, f"main.py has no flags {sorted(unknown)}"


def test_notebook_runs_the_handout_questions_in_order():
    short, long, visualize = (parse_run(args) for args in commands_of("main.py"))
    # Questions 1-2: the handout's model, 1000 steps with samples, checkpoints and FID every 100.
    assert (short.dataset, short.data_class, short.image_size, short.batch_size) == (
        "afhq", "cat", 32, 32)
    assert (short.time_steps, short.unet_dim, list(short.unet_dim_mults)) == (50, 16, [1, 2, 4, 8])
    assert (short.learning_rate, short.train_steps, short.save_and_sample_every, short.fid) == (
        1e-3, 1000, 100, True)
    # Question 3: that model resumed to 10 000 steps, FID every 1000.
    assert long.load_path == "results/model-1000.pt" and long.save_folder == "results"
    assert (long.train_steps, long.save_and_sample_every, long.fid) == (10000, 1000, True)
    assert not long.visualize
    # Question 4: the final model's processes.
    assert visualize.visualize and visualize.load_path == "results/model-10000.pt"
    # Where the notebook's data command writes (kit root) is where training reads (assignment/).
    (data_args,) = commands_of("data_scripts/download_afhq.py")
    data = load_script(ROOT / "data_scripts" / "download_afhq.py").parse_args(data_args)
    written = data.out.resolve() / "train" / data.data_class
    read = (ROOT / "assignment" / short.data_path / short.data_class).resolve()
    assert read == written


def test_notebook_keeps_each_figure_before_a_later_run_rewrites_it():
    sources = [source for _, kind, source in colab_notebook.CELLS if kind == "code"]
    runs = [k for k, s in enumerate(sources) if "python main.py" in s]
    assert len(runs) == 3
    between = "\n".join(sources[runs[0] + 1:runs[1]])
    for figure in ('"loss.png"', '"fid.png"', '"sample-1000.png"'):
        assert figure in between, f"{figure} of the 1000-step run is not kept before the resume"
    after = "\n".join(sources[runs[1]:])
    for figure in ('"sample-10000.png"', '"forward_process.png"', '"backward_process.png"'):
        assert figure in after
    assert "make_archive(str(FIGURES)" in sources[-1]  # the last cell downloads them all
