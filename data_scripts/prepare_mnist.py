"""Write a balanced MNIST subset as PNG files for training.

Takes --per_class images of each digit (default 300, so 3000 in all) from the MNIST training
split, chosen at random with --seed (the same seed always gives the same images), resizes them
once from 28x28 to --image_size (PIL bicubic), and writes 8-bit grayscale PNGs to
`<out>/train/<digit>/<index>.png` (default data/mnist/train/ in the folder that holds
data_scripts/, wherever you run it from), where <index> is the image's position in the MNIST
training split. main.py reads them with `--dataset mnist` (from assignment/, the same as
`--data_path ../data/mnist --data_class train`).

Usage (from the repository or student-kit root):
    python data_scripts/prepare_mnist.py                   # downloads MNIST into data/mnist_raw
    python data_scripts/prepare_mnist.py --per_class 100 --seed 1
    python data_scripts/prepare_mnist.py --raw path/to/MNIST/raw   # files you already have

--raw accepts a torchvision root (containing MNIST/raw/) or a folder that directly holds
train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally .gz). A finished run leaves a
marker; running again with the same settings does nothing (use --force to redo).
"""

import argparse
import gzip
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"
NUM_CLASSES = 10
# data/ beside data_scripts/: where image_data.py looks by default, whatever the working folder.
DATA = Path(__file__).resolve().parent.parent / "data"


class DataError(Exception):
    """A problem the user can fix; main() prints it without a traceback."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DATA / "mnist",
                   help="output folder; images go to OUT/train/<digit>/ (default: data/mnist "
                        "beside data_scripts/)")
    p.add_argument("--raw", type=Path, default=DATA / "mnist_raw",
                   help="MNIST download folder (torchvision root) or a folder of idx files")
    p.add_argument("--per_class", type=int, default=300, help="images per digit (default: 300)")
    p.add_argument("--image_size", type=int, default=32, help="output side in pixels (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random selection (default: 0)")
    p.add_argument("--force", action="store_true", help="redo even if the output is complete")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error(f"--per_class must be positive, got {args.per_class}")
    if args.image_size < 1:
        p.error(f"--image_size must be positive, got {args.image_size}")
    return args


def find_raw_folder(raw):
    """The folder under `raw` that holds the training idx files (plain or .gz), or None."""
    for folder in (raw, raw / "MNIST" / "raw", raw / "raw"):
        if all((folder / name).is_file() or (folder / f"{name}.gz").is_file()
               for name in (IMAGES, LABELS)):
            return folder
    return None


def download_mnist(root):
    """Let torchvision download MNIST into root/MNIST/raw; a clear error when offline.

    The download goes to a scratch folder beside it and is moved into place only when complete,
    so a failed or interrupted download leaves nothing that the next run could take for MNIST.
    """
    from torchvision.datasets import MNIST

    root = Path(root)
    created_root = not root.exists()
    scratch = root / ".download"
    print(f"downloading MNIST into {root}/MNIST/raw")
    try:
        shutil.rmtree(scratch, ignore_errors=True)  # left by an interrupted run
        MNIST(root=str(scratch), train=True, download=True)
        if (root / "MNIST").exists():
            shutil.rmtree(root / "MNIST")
        (scratch / "MNIST").rename(root / "MNIST")
    except BaseException as e:  # also Ctrl-C: clean up, then report or re-raise
        shutil.rmtree(scratch, ignore_errors=True)
        if created_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        if not isinstance(e, (RuntimeError, OSError)):
            raise
        raise DataError(
            "could not download MNIST:\n  " + "\n  ".join(str(e).strip().splitlines()) + "\n"
            "If this machine has no internet access, download train-images-idx3-ubyte.gz and "
            "train-labels-idx1-ubyte.gz (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) "
            "into one folder and run:\n"
            "  python data_scripts/prepare_mnist.py --raw that/folder") from None
    shutil.rmtree(scratch, ignore_errors=True)
    return root / "MNIST" / "raw"


def read_idx(path):
    """Read one idx file (plain or .gz): big-endian header, then uint8 data.

    Header: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, then each
    dimension as a 4-byte big-endian integer (http://yann.lecun.com/exdb/mnist/).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an idx file of unsigned bytes")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise DataError(f"{path} is not a valid MNIST idx file ({e}).") from None


def load_train_split(folder):
    """(images (N, 28, 28) uint8, labels (N,) uint8) from the idx files in `folder`."""
    found = {}
    for name in (IMAGES, LABELS):
        plain = folder / name
        found[name] = read_idx(plain if plain.is_file() else folder / f"{name}.gz")
    images, labels = found[IMAGES], found[LABELS]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: images {images.shape} and labels {labels.shape} do not match.")
    return images, labels


def select_balanced(labels, per_class, seed):
    """Indices of `per_class` examples of each digit, drawn without replacement, sorted.

    Args:
        labels: (N,) integer labels in 0..9.
    Returns:
        {digit: sorted list of indices into labels}.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = {}
    for digit in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == digit)
        if len(pool) < per_class:
            raise DataError(f"only {len(pool)} images of digit {digit}; --per_class is {per_class}.")
        chosen[digit] = sorted(rng.choice(pool, size=per_class, replace=False).tolist())
    return chosen


def resize(image, size):
    """(28, 28) uint8 -> (size, size) uint8 PIL image, resized once with PIL's bicubic filter."""
    from PIL import Image

    img = Image.fromarray(image)
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)


def prepare(args):
    marker = args.out / ".done.json"
    settings = {"per_class": args.per_class, "image_size": args.image_size, "seed": args.seed}
    if marker.is_file() and not args.force:
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in settings} == settings:
            print(f"{args.out}/train is ready ({NUM_CLASSES * args.per_class} images); "
                  "nothing to do (--force to redo).")
            return done

    folder = find_raw_folder(args.raw) or download_mnist(args.raw)
    images, labels = load_train_split(folder)
    chosen = select_balanced(labels, args.per_class, args.seed)

    marker.unlink(missing_ok=True)
    train = args.out / "train"
    if train.exists():
        shutil.rmtree(train)
    for digit, indices in chosen.items():
        dest = train / str(digit)
        dest.mkdir(parents=True)
        for index in indices:
            resize(images[index], args.image_size).save(dest / f"{index:05d}.png")
    done = {**settings, "count": NUM_CLASSES * args.per_class, "source": str(folder)}
    marker.write_text(json.dumps(done, indent=1) + "\n")
    print(f"done: {done['count']} images ({args.per_class} per digit, "
          f"{args.image_size}x{args.image_size}) in {train}/")
    return done


def main(argv=None):
    args = parse_args(argv)
    try:
        prepare(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
