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

# The handout's Colab run (AFHQ cats at 32x32). Every flag must exist in main.py
# (tests/test_notebook.py checks it against `python solutions/main.py --help`).
TRAIN_FLAGS = [
    ("--dataset", "afhq"),
    ("--data_path", "../data/afhq/train"),
    ("--data_class", "cat"),
    ("--save_folder", "{SAVE_FOLDER}"),
    ("--image_size", "32"),
    ("--batch_size", "32"),
    ("--train_steps", "10000"),
    ("--time_steps", "50"),
    ("--unet_dim", "16"),
    ("--unet_dim_mults", "1 2 4 8"),
    ("--learning_rate", "1e-3"),
    ("--save_and_sample_every", "1000"),
    ("--fid", None),
]


def _command(program, flags):
    parts = [program] + [flag if value is None else f"{flag} {value}" for flag, value in flags]
    return " \\\n    ".join(parts)


CELLS = [
    ("intro", "markdown", """\
# DDPM homework: train on AFHQ cats with a Colab GPU

This notebook runs the homework's `main.py` on a GPU: it trains a denoising diffusion model on
32x32 AFHQ cat faces for 10,000 steps, draws samples and computes FID every 1,000 steps, and
finally shows the forward (noising) and backward (denoising) processes of the trained model.

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
## 4. Train

The handout's configuration. Checkpoints (`model-<step>.pt`), sample grids
(`sample-<step>.png`), the loss curve and the FID curve go to `SAVE_FOLDER`. `--fid` downloads
clean-fid's Inception weights once. Each training step runs as one CUDA graph replay; a line
`training: fast path 'graphs' failed (...)` means your code could not be captured (for example
a `.item()` in `forward`): training goes on eagerly, several times slower.

If the runtime disconnects: rerun sections 1-3, then this cell with
`--load_path {SAVE_FOLDER}/model-<last step>.pt` added; training continues from that step. To
keep checkpoints across sessions, mount Google Drive and point `SAVE_FOLDER` there."""),

    ("train", "code", "SAVE_FOLDER = \"/content/results/afhq_cat\"\n"
                      "%cd {KIT}/assignment\n!" + _command("python main.py", TRAIN_FLAGS)),

    ("results-md", "markdown", """\
## 5. Loss curve and samples"""),

    ("results", "code", """\
import re
from IPython.display import Image, display

results = pathlib.Path(SAVE_FOLDER)


def by_step(pattern):
    \"\"\"Files like sample-<step>.png, sorted by step.\"\"\"
    return sorted(results.glob(pattern), key=lambda p: int(re.findall(r"\\d+", p.stem)[-1]))


for curve in ("loss.png", "fid.png"):
    if (results / curve).is_file():
        display(Image(filename=str(results / curve)))
samples = by_step("sample-*.png")
print(f"{len(samples)} sample grids; the last one, {samples[-1].name}:")
display(Image(filename=str(samples[-1])))"""),

    ("visualize-md", "markdown", """\
## 6. Forward and backward processes of the final model

`--visualize` loads the checkpoint and saves `forward_process.png` (an image being noised) and
`backward_process.png` (noise being denoised) instead of training."""),

    ("visualize", "code", """\
checkpoint = by_step("model-*.pt")[-1]
print("visualizing", checkpoint)
!python main.py --load_path {checkpoint} --save_folder {SAVE_FOLDER} --visualize
display(Image(filename=str(results / "forward_process.png")))
display(Image(filename=str(results / "backward_process.png")))"""),

    ("download-md", "markdown", """\
## 7. Keep your results

Download the figures (and the final checkpoint) before the runtime is recycled."""),

    ("download", "code", """\
import shutil
from google.colab import files

keep = results.parent / "afhq_cat_figures"
keep.mkdir(exist_ok=True)
for path in [*results.glob("*.png"), *results.glob("*.csv"), checkpoint]:
    shutil.copy(path, keep / path.name)
files.download(shutil.make_archive(str(keep), "zip", keep))"""),
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
