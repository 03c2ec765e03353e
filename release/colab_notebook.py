"""Generate solutions/run_in_colab.ipynb, the notebook that runs the homework on a Colab GPU.

    python -m release.colab_notebook [--out PATH]     # default: solutions/run_in_colab.ipynb

The release copies the notebook into assignment/ unchanged. The output is deterministic (fixed
cell ids, no timestamps, no outputs), so rebuilding gives byte-identical files and the release
can check that the committed notebook is not stale. Edit this file, never the .ipynb.
"""

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "solutions" / "run_in_colab.ipynb"

# The handout's empirical runs (AFHQ cats at 32x32), in its order. Every flag must exist in
# main.py (tests/test_notebook.py checks it against main.py's parser).
MODEL_FLAGS = [
    ("--dataset", "afhq"),
    ("--data_path", "../data/afhq/train"),
    ("--data_class", "cat"),
    ("--image_size", "32"),
    ("--time_steps", "50"),
    ("--unet_dim", "16"),
    ("--unet_dim_mults", "1 2 4 8"),
]
# Questions 1-2: 1000 steps with samples, a checkpoint and FID every 100 steps.
SHORT_RUN_FLAGS = MODEL_FLAGS + [
    ("--save_folder", "{SAVE_FOLDER}"),
    ("--batch_size", "32"),
    ("--learning_rate", "1e-3"),
    ("--train_steps", "1000"),
    ("--save_and_sample_every", "100"),
    ("--fid", None),
]
# Question 3: the same model resumed to 10 000 steps (model flags come from the checkpoint).
LONG_RUN_FLAGS = [
    ("--load_path", "{SAVE_FOLDER}/model-1000.pt"),
    ("--save_folder", "{SAVE_FOLDER}"),
    ("--train_steps", "10000"),
    ("--save_and_sample_every", "1000"),
    ("--fid", None),
]
# Question 4: the processes of the final model.
VISUALIZE_FLAGS = [
    ("--load_path", "{SAVE_FOLDER}/model-10000.pt"),
    ("--save_folder", "{SAVE_FOLDER}"),
    ("--visualize", None),
]


def _command(program, flags):
    parts = [program] + [flag if value is None else f"{flag} {value}" for flag, value in flags]
    return " \\\n    ".join(parts)


CELLS = [
    ("intro", "markdown", """\
# DDPM homework: train on AFHQ cats with a Colab GPU

This notebook runs the handout's empirical questions with the homework's `main.py` on a GPU, in
order: a denoising diffusion model on 32x32 AFHQ cat faces trained for 1000 steps with samples and
FID every 100 steps (questions 1-2), the same model continued to 10 000 steps (question 3), and
the forward (noising) and backward (denoising) processes of the final model (question 4). Every
figure a question asks for is kept in `/content/results/figures`, named by question.

Before you start: **Runtime > Change runtime type > GPU** (a T4 is enough). Your code should
already pass the public tests on your own machine (`python -m pytest tests_public`): this
notebook runs exactly the files of your kit.

Run the cells in order. If the runtime disconnects, rerun the setup cells and resume training
from the last checkpoint (see the note after the training cell)."""),

    ("kit-md", "markdown", """\
## 1. Get your student kit

Either upload the kit as a zip (`student.zip`, or a zip of your working folder with
`assignment/`, `data_scripts/` and `requirements.txt` at its top), or set `KIT_URL` to a
**private** git repository of your own that holds the kit. The kit ends up in
`/content/ddpm_kit`."""),

    ("kit", "code", """\
import pathlib
import zipfile

KIT_URL = ""  # e.g. "https://github.com/<you>/<private-repo>.git"; empty: upload a zip
KIT = pathlib.Path("/content/ddpm_kit")

if not (KIT / "assignment").is_dir():
    if KIT_URL:
        !git clone --quiet {KIT_URL} {KIT}
    else:
        from google.colab import files

        uploaded = files.upload()  # choose the kit's .zip
        (name,) = uploaded
        with zipfile.ZipFile(name) as archive:
            archive.extractall(KIT)
        # A zip of a folder puts everything one level down: use that level.
        inner = [p for p in KIT.iterdir() if (p / "assignment").is_dir()]
        if not (KIT / "assignment").is_dir() and len(inner) == 1:
            for item in inner[0].iterdir():
                item.rename(KIT / item.name)
assert (KIT / "assignment" / "main.py").is_file(), f"no assignment/main.py under {KIT}"
%cd {KIT}"""),

    ("install", "code", """\
!pip install --quiet -r requirements.txt"""),

    ("gpu-md", "markdown", """\
## 2. Check the GPU"""),

    ("gpu", "code", """\
!nvidia-smi
import torch

if torch.cuda.is_available():
    print("training on", torch.cuda.get_device_name(0))
else:
    print("No GPU: choose Runtime > Change runtime type > GPU, then run the notebook again.")"""),

    ("data-md", "markdown", """\
## 3. Download AFHQ and keep the cats at 32x32

`data_scripts/download_afhq.py` downloads the AFHQ archive (about 7 GB; a few minutes on Colab),
keeps the `cat` class, resizes every image once to 32x32 and writes PNGs to
`data/afhq/train/cat/`. Running it again does nothing once the images are there."""),

    ("data", "code", """\
%cd {KIT}
!python data_scripts/download_afhq.py --class cat --image_size 32"""),

    ("train-md", "markdown", """\
## 4. Questions 1-2: 1000 steps, FID every 100

The handout's first run: samples, a checkpoint and FID every 100 steps, into `SAVE_FOLDER`.
`--fid` downloads clean-fid's Inception weights once. Its `loss.png` and `fid.png` are copied to
`FIGURES` right after, because the next run rewrites them with the whole curves. Each training
step runs as one CUDA graph replay; a line `training: fast path 'graphs' failed (...)` means your
code could not be captured (for example a `.item()` in `forward`): training goes on eagerly,
several times slower.

If the runtime disconnects: rerun sections 1-3 and the cell below that sets `SAVE_FOLDER`, then
resume with `--load_path {SAVE_FOLDER}/model-<last step>.pt` added to the training command (the
newest three checkpoints are kept). To keep checkpoints across sessions, mount Google Drive and
point `SAVE_FOLDER` there."""),

    ("train-1000", "code", "import pathlib\n"
                           "import shutil\n"
                           "from IPython.display import Image, display\n\n"
                           "SAVE_FOLDER = \"/content/results/afhq_cat\"\n"
                           "FIGURES = pathlib.Path(\"/content/results/figures\")\n"
                           "results = pathlib.Path(SAVE_FOLDER)\n"
                           "%cd {KIT}/assignment\n!" + _command("python main.py", SHORT_RUN_FLAGS)),

    ("keep-1000", "code", """\
FIGURES.mkdir(parents=True, exist_ok=True)
# Question 1: loss.png; question 2: fid.png; question 3 compares sample-1000.png with the end.
for name, kept in [("loss.png", "q1_loss_1000_steps.png"), ("fid.png", "q2_fid_1000_steps.png"),
                   ("sample-1000.png", "q3_sample-1000.png")]:
    shutil.copy(results / name, FIGURES / kept)
    print(kept)
    display(Image(filename=str(FIGURES / kept)))"""),

    ("train-10000-md", "markdown", """\
## 5. Question 3: continue the same model to 10 000 steps

Resumes from `model-1000.pt` (the model flags come from the checkpoint); checkpoints, samples and
FID every 1000 steps. Then `sample-1000.png` and `sample-10000.png` side by side."""),

    ("train-10000", "code", "%cd {KIT}/assignment\n!" + _command("python main.py", LONG_RUN_FLAGS)),

    ("keep-10000", "code", """\
shutil.copy(results / "sample-10000.png", FIGURES / "q3_sample-10000.png")
for kept in ("q3_sample-1000.png", "q3_sample-10000.png"):
    print(kept)
    display(Image(filename=str(FIGURES / kept)))
# The whole curves, for reference (not asked for).
for name in ("loss.png", "fid.png"):
    shutil.copy(results / name, FIGURES / f"whole_{name}")"""),

    ("visualize-md", "markdown", """\
## 6. Question 4: forward and backward processes of the final model

`--visualize` loads the checkpoint and saves `forward_process.png` (an image being noised) and
`backward_process.png` (noise being denoised) instead of training."""),

    ("visualize", "code", """\
%cd {KIT}/assignment
!""" + _command("python main.py", VISUALIZE_FLAGS) + """
for name in ("forward_process.png", "backward_process.png"):
    shutil.copy(results / name, FIGURES / f"q4_{name}")
    print(f"q4_{name}")
    display(Image(filename=str(FIGURES / f"q4_{name}")))"""),

    ("download-md", "markdown", """\
## 7. Keep your results

Downloads `FIGURES` as a zip: every figure the empirical questions ask for, named by question.
Copy the final checkpoint (`model-10000.pt`) too if you want it."""),

    ("download", "code", """\
from google.colab import files

files.download(shutil.make_archive(str(FIGURES), "zip", FIGURES))"""),
]


def notebook():
    """The notebook as an nbformat v4 NotebookNode (no outputs, stable cell ids)."""
    cells = []
    for cell_id, kind, source in CELLS:
        make = new_markdown_cell if kind == "markdown" else new_code_cell
        cells.append(make(source=source, id=cell_id))
    nb = new_notebook(cells=cells, metadata={
        "accelerator": "GPU",
        "colab": {"provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    nbformat.validate(nb)
    return nb


def build(path=DEFAULT_OUT):
    """Write the notebook to `path` (byte-identical on every run); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(notebook()) + "\n", encoding="utf-8")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m release.colab_notebook",
                                description="Generate the Colab notebook.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = p.parse_args(argv)
    print(f"wrote {build(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
