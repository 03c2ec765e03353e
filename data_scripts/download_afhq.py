"""Download AFHQ (Choi et al., StarGAN v2) and prepare one class for training.

Writes `<out>/train/<class>/*.png` (and `<out>/val/<class>/*.png` when the archive has a
val split), every image center-cropped to a square and resized once to
`--image_size` x `--image_size` RGB with a Lanczos filter. With the defaults this is
`data/afhq/train/cat/` in the folder that holds data_scripts/ (the repository or student-kit
root), wherever you run it from: the layout and place main.py reads by default
(`--dataset afhq`, i.e. `--data_path ../data/afhq/train --data_class cat` from assignment/).

Usage (from the repository or student-kit root):
    python data_scripts/download_afhq.py                      # download, keep cats at 32x32
    python data_scripts/download_afhq.py --class dog --image_size 64
    python data_scripts/download_afhq.py --archive ~/afhq.zip  # use a zip you already have

The archive (about 7 GB) is kept next to the output (`data/afhq.zip`), so a rerun with
another class or size does not download it again. A finished run leaves a marker file;
running again with the same settings does nothing (use --force to redo).
"""

import argparse
import hashlib
import io
import json
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# data/ beside data_scripts/: where image_data.py looks by default, whatever the working folder.
DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_URL = "https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1"
CLASSES = ("cat", "dog", "wild")
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CHUNK = 1 << 20


class DataError(Exception):
    """A problem the user can fix; main() prints it without a traceback."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--class", dest="data_class", default="cat", choices=CLASSES,
                   help="AFHQ class to keep (default: cat)")
    p.add_argument("--image_size", type=int, default=32, help="output side in pixels (default: 32)")
    p.add_argument("--out", type=Path, default=DATA / "afhq",
                   help="output folder; images go to OUT/train/CLASS/ (default: data/afhq "
                        "beside data_scripts/)")
    p.add_argument("--url", default=DEFAULT_URL, help="where to download afhq.zip from")
    p.add_argument("--archive", type=Path, default=None,
                   help="use this local afhq.zip instead of downloading")
    p.add_argument("--download_to", type=Path, default=None,
                   help="where to save the downloaded zip (default: OUT/../afhq.zip)")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (optional)")
    p.add_argument("--force", action="store_true",
                   help="prepare the images again even if they are complete (the downloaded "
                        "zip is reused; delete it to download again)")
    args = p.parse_args(argv)
    if args.image_size < 1:
        p.error(f"--image_size must be positive, got {args.image_size}")
    return args


# ---------------------------------------------------------------- download

def download(url, dest):
    """Download `url` to `dest` with a progress bar; a partial file never takes its name."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "ddpm-homework/1.0"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"downloading {dest.name}") as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"could not download {url}\n  ({reason})\n"
            "If this machine has no internet access, download afhq.zip yourself (open the URL in a "
            "browser), copy it here, and run:\n"
            "  python data_scripts/download_afhq.py --archive path/to/afhq.zip") from None
    part.replace(dest)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- archive

def open_archive(path):
    """Open and sanity-check the zip; return (ZipFile, prefix) where prefix ends in 'afhq/'."""
    if not path.is_file():
        raise DataError(f"archive not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a valid zip archive (corrupt or incomplete download?). "
                        "Delete it and run again, or pass --archive with a good copy.")
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip archive: {e}") from None
    # Accept the archive's folder at any depth ("afhq/train/cat/x.jpg" in the original).
    prefixes = {m.group(1) for n in names if (m := re.match(r"(.*?afhq/)train/", n))}
    if not prefixes:
        raise DataError(f"{path} does not look like AFHQ: no 'afhq/train/<class>/' folder inside.")
    return archive, min(prefixes, key=len)


def members_by_split(archive, prefix, data_class):
    """{split: [member names]} of the images of `data_class`, sorted; train must be non-empty."""
    names = archive.namelist()
    found = {}
    for split in SPLITS:
        folder = f"{prefix}{split}/{data_class}/"
        found[split] = sorted(n for n in names if n.startswith(folder)
                              and "/" not in n[len(folder):]
                              and n.lower().endswith(IMAGE_SUFFIXES))
    if not found["train"]:
        train = f"{prefix}train/"
        present = sorted({n[len(train):].split("/")[0] for n in names
                          if n.startswith(train) and "/" in n[len(train):]})
        raise DataError(f"the archive has no images in '{prefix}train/{data_class}/' "
                        f"(classes found: {', '.join(present) or 'none'}).")
    return {split: members for split, members in found.items() if members}


def to_square(img, size):
    """Center-crop to a square, then resize once with Lanczos (antialiased when shrinking)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def extract_class(archive, members, dest, size):
    """Write each member of `members` as dest/<stem>.png; returns the number written."""
    from tqdm import tqdm

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in tqdm(members, desc=f"writing {dest}", unit="img"):
        try:
            with Image.open(io.BytesIO(archive.read(name))) as img:
                out = to_square(img.convert("RGB"), size)
        except (zipfile.BadZipFile, UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read {name} from the archive ({e}); "
                            "the archive is probably corrupt: download it again.") from None
        out.save(dest / (Path(name).stem + ".png"))
    return len(members)


# ---------------------------------------------------------------- main

def prepare(args):
    marker = args.out / f".done-{args.data_class}.json"
    settings = {"class": args.data_class, "image_size": args.image_size}
    if marker.is_file() and not args.force:
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in settings} == settings:
            print(f"{args.out}/train/{args.data_class} is ready ({done['counts']['train']} images, "
                  f"{args.image_size}x{args.image_size}); nothing to do (--force to redo).")
            return done

    archive_path = args.archive
    if archive_path is None:
        archive_path = args.download_to or args.out.parent / "afhq.zip"
        if not archive_path.is_file():  # --force re-extracts; delete the zip to re-download
            print(f"downloading AFHQ from {args.url}")
            download(args.url, archive_path)
        else:
            print(f"using the archive downloaded before: {archive_path}")
    if args.sha256:
        actual = sha256_of(archive_path)
        if actual.lower() != args.sha256.lower():
            raise DataError(f"{archive_path}: SHA-256 is {actual}, expected {args.sha256}. "
                            "The download is corrupt or a different file: delete it and try again.")

    archive, prefix = open_archive(archive_path)
    with archive:
        members = members_by_split(archive, prefix, args.data_class)
        marker.unlink(missing_ok=True)
        counts = {split: extract_class(archive, names, args.out / split / args.data_class,
                                       args.image_size)
                  for split, names in members.items()}
    done = {**settings, "counts": counts, "archive": str(archive_path)}
    marker.write_text(json.dumps(done, indent=1) + "\n")
    print(f"done: {', '.join(f'{n} {s}' for s, n in counts.items())} images of class "
          f"'{args.data_class}' at {args.image_size}x{args.image_size} in {args.out}/")
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
