"""Training images for the diffusion model, as tensors in [-1, 1].

--dataset digits  scikit-learn's bundled 8x8 digits (1797 images, needs no download),
                  upsampled to --image_size, 1 channel. The default: works offline.
--dataset afhq    AFHQ photos, <data_path>/<data_class>/ (default data/afhq/train/cat).
--dataset mnist   MNIST digits, <data_path>/<data_class>/ (default data/mnist/train).
--dataset folder  any folder of png/jpg images: <data_path>/<data_class>/ (searched recursively).

The folder datasets are prepared by the scripts in data_scripts/, already resized to the training
size; this module checks the size and says which script to run when something is missing.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms.functional import pil_to_tensor

from diffusion import normalize

# data/ next to the homework folder (solutions/ or assignment/).
DATA_ROOT = Path(__file__).resolve().parent.parent / "data"

DATASETS = ("digits", "afhq", "mnist", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Default (data_path, data_class) of the folder datasets.
FOLDER_DEFAULTS = {
    "afhq": (DATA_ROOT / "afhq" / "train", "cat"),
    "mnist": (DATA_ROOT / "mnist", "train"),
    "folder": (None, ""),
}

# The data_scripts/ command that prepares each downloadable dataset. data_scripts/ writes to
# data/ relative to where it runs, so it runs from the folder that holds data/ (DATA_ROOT.parent).
PREPARE_COMMANDS = {
    "afhq": "python data_scripts/download_afhq.py --class {data_class} --image_size {size}",
    "mnist": "python data_scripts/prepare_mnist.py --image_size {size}",
}

# PIL modes that hold a single grey channel; everything else is read as RGB.
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


class DatasetError(ValueError):
    """The requested training images are missing or do not fit the flags."""


def _how_to_prepare(name, image_size, data_class=None):
    if name in PREPARE_COMMANDS:
        command = PREPARE_COMMANDS[name].format(size=image_size, data_class=data_class or "cat")
        return f"Prepare it with:\n    cd {DATA_ROOT.parent} && {command}"
    return "Point --data_path/--data_class at a folder of .png/.jpg images."


def load_digits_dataset(image_size):
    """scikit-learn's 8x8 digits, upsampled (bicubic) to image_size x image_size.

    Returns:
        TensorDataset of (1797, 1, image_size, image_size) float32 images in [-1, 1]
        (white digits on black, like MNIST).
    """
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().images).float() / 16.0  # values 0..16 -> [0, 1]
    images = F.interpolate(pixels[:, None], size=(image_size, image_size), mode="bicubic",
                           align_corners=False, antialias=image_size < 8)
    # bicubic overshoots slightly at the strokes' edges
    return TensorDataset(normalize(images.clamp(0.0, 1.0)))


class ImageFolderDataset(Dataset):
    """All .png/.jpg/.jpeg images under `root` (recursively), as tensors in [-1, 1].

    The channel count comes from the first image's mode: grayscale -> 1, otherwise 3 (RGB);
    every image is converted to that mode. Items are 1-tuples (image,), image (C, H, W).
    """

    def __init__(self, root, image_size, name="folder"):
        root = Path(root)
        hint = _how_to_prepare(name, image_size, root.name)
        if not root.is_dir():
            raise DatasetError(f"Dataset folder {root} does not exist.\n"
                               + hint)
        self.files = sorted(p for p in root.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise DatasetError(f"Dataset folder {root} has no .png/.jpg images.\n"
                               + hint)
        # Reading the headers of all images is cheap and catches a wrong size before training.
        for path in self.files:
            with Image.open(path) as img:
                if img.size != (image_size, image_size):
                    raise DatasetError(
                        f"{path} is {img.size[0]}x{img.size[1]} but --image_size is {image_size}; "
                        f"the images must already have the training size.\n"
                        + hint)
        with Image.open(self.files[0]) as img:
            self.mode = "L" if img.mode in _GRAY_MODES else "RGB"
        self.channels = 1 if self.mode == "L" else 3
        self.root = root

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as img:
            image = pil_to_tensor(img.convert(self.mode)).float() / 255.0
        return (normalize(image),)


def resolve_folder(name, data_path=None, data_class=None):
    """The folder that holds the images of a folder dataset: <data_path>/<data_class>."""
    default_path, default_class = FOLDER_DEFAULTS[name]
    data_path = data_path if data_path is not None else default_path
    if data_path is None:
        raise DatasetError("--dataset folder needs --data_path (a folder of .png/.jpg images).")
    data_class = data_class if data_class is not None else default_class
    return Path(data_path) / data_class


def load_dataset(name, image_size, data_path=None, data_class=None):
    """Build the training set.

    Args:
        name: one of DATASETS.
        image_size: H = W of the training images.
        data_path, data_class: folder datasets only; images are read from <data_path>/<data_class>/.
            None means the dataset's default (see FOLDER_DEFAULTS).
    Returns:
        (dataset, channels): a Dataset whose items are 1-tuples (image,) with image
        (channels, image_size, image_size) in [-1, 1], and the channel count (1 or 3).
    Raises:
        DatasetError: unknown name, missing or empty folder, or images of the wrong size.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_dataset(image_size), 1
    dataset = ImageFolderDataset(resolve_folder(name, data_path, data_class), image_size, name)
    return dataset, dataset.channels
