"""The data_scripts/ run as students run them (subprocesses), on small data the tests build."""

import gzip
import io
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "data_scripts"


def run_script(name, *args, cwd):
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_clean_failure(result, *words):
    """Exit code != 0, a message naming the problem, and no Python traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def jpeg_bytes(size, color):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def fake_afhq(tmp_path):
    """A tiny AFHQ-shaped zip: 3 train cats (one not square), 2 train dogs, 1 val cat."""
    path = tmp_path / "afhq.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("afhq/train/cat/flickr_cat_000001.jpg", jpeg_bytes((40, 40), (200, 30, 30)))
        z.writestr("afhq/train/cat/flickr_cat_000002.jpg", jpeg_bytes((48, 40), (30, 200, 30)))
        z.writestr("afhq/train/cat/pixabay_cat_000003.jpg", jpeg_bytes((40, 40), (30, 30, 200)))
        z.writestr("afhq/train/dog/flickr_dog_000001.jpg", jpeg_bytes((40, 40), (9, 9, 9)))
        z.writestr("afhq/train/dog/flickr_dog_000002.jpg", jpeg_bytes((40, 40), (9, 9, 9)))
        z.writestr("afhq/val/cat/flickr_cat_000100.jpg", jpeg_bytes((40, 40), (90, 90, 90)))
    return path


def test_afhq_keeps_only_the_requested_class_resized_in_the_trainer_layout(tmp_path, fake_afhq):
    out = tmp_path / "data" / "afhq"
    result = run_script("download_afhq.py", "--archive", fake_afhq, "--out", out,
                        "--image_size", 8, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    train = sorted((out / "train" / "cat").iterdir())
    assert [p.name for p in train] == ["flickr_cat_000001.png", "flickr_cat_000002.png",
                                       "pixabay_cat_000003.png"]
    assert [p.name for p in (out / "val" / "cat").iterdir()] == ["flickr_cat_000100.png"]
    assert not (out / "train" / "dog").exists()
    for path in train:
        with Image.open(path) as img:
            assert img.size == (8, 8) and img.mode == "RGB"
    # A flat colour survives the resize (JPEG is lossy: a few levels of slack).
    with Image.open(train[0]) as img:
        assert np.abs(np.asarray(img, dtype=int) - [200, 30, 30]).max() <= 6


def test_afhq_second_run_does_nothing_and_force_redoes(tmp_path, fake_afhq):
    out = tmp_path / "afhq"
    args = ("--archive", fake_afhq, "--out", out, "--image_size", 4)
    assert run_script("download_afhq.py", *args, cwd=tmp_path).returncode == 0
    stamp = (out / "train" / "cat" / "flickr_cat_000001.png").stat().st_mtime_ns

    again = run_script("download_afhq.py", *args, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert (out / "train" / "cat" / "flickr_cat_000001.png").stat().st_mtime_ns == stamp

    bigger = run_script("download_afhq.py", "--archive", fake_afhq, "--out", out,
                        "--image_size", 6, cwd=tmp_path)
    assert bigger.returncode == 0 and "nothing to do" not in bigger.stdout
    with Image.open(out / "train" / "cat" / "flickr_cat_000001.png") as img:
        assert img.size == (6, 6)


def test_afhq_corrupt_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "afhq.zip"
    bad.write_bytes(b"<html>not a zip, maybe a login page</html>")
    result = run_script("download_afhq.py", "--archive", bad, "--out", tmp_path / "o", cwd=tmp_path)
    assert_clean_failure(result, "not a valid zip")


def test_afhq_archive_without_train_folder_is_a_clear_error(tmp_path):
    wrong = tmp_path / "other.zip"
    with zipfile.ZipFile(wrong, "w") as z:
        z.writestr("pictures/cat/a.jpg", jpeg_bytes((8, 8), (0, 0, 0)))
    result = run_script("download_afhq.py", "--archive", wrong, "--out", tmp_path / "o", cwd=tmp_path)
    assert_clean_failure(result, "afhq/train")


def test_afhq_missing_class_names_the_classes_present(tmp_path, fake_afhq):
    result = run_script("download_afhq.py", "--archive", fake_afhq, "--class", "wild",
                        "--out", tmp_path / "o", cwd=tmp_path)
    assert_clean_failure(result, "afhq/train/wild", "cat, dog")


def test_afhq_wrong_sha256_is_a_clear_error(tmp_path, fake_afhq):
    result = run_script("download_afhq.py", "--archive", fake_afhq, "--sha256", "0" * 64,
                        "--out", tmp_path / "o", cwd=tmp_path)
    assert_clean_failure(result, "SHA-256")


def test_afhq_unreachable_url_says_to_download_by_hand(tmp_path):
    result = run_script("download_afhq.py", "--url", "http://127.0.0.1:9/afhq.zip",
                        "--out", tmp_path / "data" / "afhq", cwd=tmp_path)
    assert_clean_failure(result, "could not download", "--archive")
    assert not list((tmp_path / "data").glob("*.part"))


def write_idx_gz(path, array):
    """The MNIST idx format: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_subset_is_balanced_resized_and_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 7)  # 7 examples of each digit
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(len(labels), 28, 28))
    raw = tmp_path / "raw"
    raw.mkdir()
    write_idx_gz(raw / "train-images-idx3-ubyte.gz", images)
    write_idx_gz(raw / "train-labels-idx1-ubyte.gz", labels)

    def prepare(out, seed):
        result = run_script("prepare_mnist.py", "--raw", raw, "--out", out, "--per_class", 4,
                            "--seed", seed, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return sorted(p.relative_to(out).as_posix() for p in (out / "train").rglob("*.png"))

    files = prepare(tmp_path / "a", seed=3)
    assert len(files) == 40
    for digit in range(10):
        picked = [f for f in files if f.startswith(f"train/{digit}/")]
        assert len(picked) == 4
        # File names are indices into the idx file: each really is an image of that digit.
        assert all(labels[int(Path(f).stem)] == digit for f in picked)
    with Image.open(tmp_path / "a" / files[0]) as img:
        assert img.size == (32, 32) and img.mode == "L"

    assert prepare(tmp_path / "b", seed=3) == files
    assert prepare(tmp_path / "c", seed=4) != files


def test_mnist_too_few_examples_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_idx_gz(raw / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28)))
    write_idx_gz(raw / "train-labels-idx1-ubyte.gz", np.arange(10))
    result = run_script("prepare_mnist.py", "--raw", raw, "--out", tmp_path / "o",
                        "--per_class", 2, cwd=tmp_path)
    assert_clean_failure(result, "only 1 images of digit 0")


def test_mnist_download_is_moved_into_place_only_when_complete(tmp_path, monkeypatch, capsys):
    """The real download code against a local server: a failed download leaves nothing behind
    (an empty or partial data/mnist_raw would be taken for MNIST by the next run)."""
    import functools
    import hashlib
    import http.server
    import threading

    from torchvision.datasets import MNIST

    served = tmp_path / "server"
    served.mkdir()
    labels = np.repeat(np.arange(10), 3)
    write_idx_gz(served / "train-images-idx3-ubyte.gz", np.zeros((len(labels), 28, 28)))
    write_idx_gz(served / "train-labels-idx1-ubyte.gz", labels)
    write_idx_gz(served / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    write_idx_gz(served / "t10k-labels-idx1-ubyte.gz", np.arange(2))
    resources = [(p.name, hashlib.md5(p.read_bytes()).hexdigest())
                 for p in sorted(served.iterdir())]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    monkeypatch.setattr(MNIST, "resources", resources)
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import prepare_mnist

    raw, out = tmp_path / "data" / "mnist_raw", tmp_path / "data" / "mnist"
    args = ["--raw", str(raw), "--out", str(out), "--per_class", "2"]
    try:
        labels_file = served / "train-labels-idx1-ubyte.gz"
        labels_file.rename(served / "away.gz")  # the second file fails after the first arrived
        assert prepare_mnist.main(args) == 1
        assert "could not download MNIST" in capsys.readouterr().err
        assert not raw.exists(), sorted(p.as_posix() for p in raw.rglob("*"))

        (served / "away.gz").rename(labels_file)
        assert prepare_mnist.main(args) == 0, capsys.readouterr().err
        assert (raw / "MNIST" / "raw" / "train-labels-idx1-ubyte").is_file()
        assert sorted(p.name for p in raw.iterdir()) == ["MNIST"]  # no scratch folder left
        assert len(list((out / "train").rglob("*.png"))) == 20
    finally:
        server.shutdown()


@pytest.mark.slow  # about 4 s: imports torch and scikit-learn in a subprocess
def test_embedded_digits_export_matches_the_in_memory_dataset(tmp_path):
    from image_data import load_digits_dataset  # solutions/, on sys.path via conftest

    out = tmp_path / "digits"
    result = run_script("embedded_digits.py", "--out", out, "--image_size", 12, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted((out / "train").rglob("*.png"), key=lambda p: int(p.stem))
    assert len(files) == 1797
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(d) for d in range(10)]

    (expected,) = load_digits_dataset(12)[int(files[5].stem)]
    with Image.open(files[5]) as img:
        assert img.size == (12, 12) and img.mode == "L"
        got = np.asarray(img, dtype=np.float64) / 255.0
    # PNG stores 8 bits: half a level of rounding, against [-1, 1] mapped back to [0, 1].
    np.testing.assert_allclose(got, (expected[0].numpy() + 1) / 2, atol=0.5 / 255 + 1e-6)
