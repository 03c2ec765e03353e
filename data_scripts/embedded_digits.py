"""Export the embedded digits dataset (the offline default of main.py) as PNG files.

scikit-learn ships 1797 8x8 handwritten digits (values 0..16) with the library, so this needs
no network. They are upsampled to --image_size exactly as `--dataset digits` does in memory
(solutions/image_data.py: bicubic interpolation on [0, 1] values, align_corners=False, then
clamped), and written as 8-bit grayscale PNGs to `<out>/train/<digit>/<index>.png` (default
data/digits/train/ in the folder that holds data_scripts/), <index> being the position in
load_digits(). Use them to look at the
training data or as the reference folder of an FID computation.

Usage (from the repository or student-kit root):
    python data_scripts/embedded_digits.py
    python data_scripts/embedded_digits.py --image_size 16 --out data/digits16
"""

import argparse
import shutil
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DATA / "digits",
                   help="output folder; images go to OUT/train/<digit>/ (default: data/digits "
                        "beside data_scripts/)")
    p.add_argument("--image_size", type=int, default=32, help="output side in pixels (default: 32)")
    args = p.parse_args(argv)
    if args.image_size < 1:
        p.error(f"--image_size must be positive, got {args.image_size}")
    return args


def upsampled_digits(image_size):
    """All 1797 digits at image_size x image_size.

    Returns:
        images: (1797, image_size, image_size) float32 tensor in [0, 1] (white on black).
        labels: (1797,) int64 numpy array, digits 0..9.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float() / 16.0  # values 0..16 -> [0, 1]
    # Same call as load_digits_dataset in image_data.py, so the PNGs match the training tensors.
    images = F.interpolate(pixels[:, None], size=(image_size, image_size), mode="bicubic",
                           align_corners=False, antialias=image_size < 8)
    return images.clamp(0.0, 1.0)[:, 0], digits.target


def export(out, image_size):
    """Write the PNGs; returns the number written."""
    from PIL import Image

    images, labels = upsampled_digits(image_size)
    pixels = (images * 255.0).round().byte().numpy()
    train = out / "train"
    if train.exists():
        shutil.rmtree(train)
    for digit in sorted(set(labels.tolist())):
        (train / str(digit)).mkdir(parents=True)
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        Image.fromarray(image).save(train / str(label) / f"{index:04d}.png")
    print(f"done: {len(pixels)} digits at {image_size}x{image_size} in {train}/")
    return len(pixels)


def main(argv=None):
    args = parse_args(argv)
    export(args.out, args.image_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
