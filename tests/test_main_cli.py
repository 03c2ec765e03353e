"""main.py's command line: help, argparse-style errors for bad flags and missing data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import main
from image_data import DatasetError, load_dataset

SOLUTIONS = Path(main.__file__).resolve().parent
FLAGS = ["--data_path", "--data_class", "--save_folder", "--load_path", "--image_size",
         "--batch_size", "--train_steps", "--time_steps", "--unet_dim", "--unet_dim_mults",
         "--learning_rate", "--save_and_sample_every", "--fid", "--visualize", "--dataset",
         "--schedule", "--loss", "--device", "--seed", "--wandb", "--threads", "--num_samples",
         "--fid_num_samples"]


def run_main(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "main.py", *args], cwd=SOLUTIONS, env=env,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_every_flag():
    result = run_main("--help")
    assert result.returncode == 0, result.stderr
    missing = [flag for flag in FLAGS if flag not in result.stdout]
    assert not missing, f"--help does not mention {missing}"


def test_help_does_not_import_torch():
    # --help and usage errors answer at once: torch (seconds to import) is loaded after parsing.
    code = ("import sys, main\n"
            "try:\n    main.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusion', 'trainer', 'unet', 'fast_path') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=SOLUTIONS, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-500:]


def test_the_flag_choices_are_those_of_the_homework_modules():
    import diffusion
    import fast_path
    import image_data

    assert main.FAST_MODES == tuple(fast_path.FAST_MODES)
    assert main.DATASETS == tuple(image_data.DATASETS)
    assert sorted(main.SCHEDULES) == sorted(diffusion.SCHEDULES)
    assert sorted(main.LOSSES) == sorted(diffusion.LOSSES)


def test_an_abbreviated_flag_is_an_error_that_names_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(["--train_step", "10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --train_step 10" in err
    assert "--train_step: did you mean --train_steps?" in err


def test_dashes_work_like_underscores():
    args = main.parse_args(["--batch-size", "8", "--save-and-sample-every=5", "--unet-dim-mults",
                            "1", "2"])
    assert (args.batch_size, args.save_and_sample_every, args.unet_dim_mults) == (8, 5, [1, 2])


def test_a_misspelled_flag_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(["--bach_size", "8", "--frobnicate"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--bach_size: did you mean --batch_size?" in err
    assert "--frobnicate: no such flag" in err


def test_a_bad_flag_exits_with_status_2_and_a_usage_message():
    result = run_main("--image_size", "30")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: main.py")
    assert "--image_size 30 must be divisible by 8" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["--image_size", "18", "--unet_dim_mults", "1", "2", "4"], "must be divisible by 4"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--visualize"], "--visualize needs --load_path"),
    (["--train_steps", "-5"], "--train_steps must be >= 0"),
    (["--batch_size", "0"], "--batch_size must be a positive integer"),
    (["--time_steps", "0"], "--time_steps must be a positive integer"),
    (["--learning_rate", "0"], "--learning_rate must be positive"),
    (["--unet_dim", "15"], "--unet_dim must be even"),
    (["--schedule", "quadratic"], "invalid choice: 'quadratic'"),
    (["--loss", "huber"], "invalid choice: 'huber'"),
    (["--dataset", "folder"], "--dataset folder needs --data_path"),
    (["--load_path", "no/such/model.pt"], "does not exist"),
    (["--device", "tpu"], "--device"),
    (["--threads", "0"], "--threads must be a positive integer"),
])
def test_bad_flags_are_rejected_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_defaults_match_the_colab_configuration():
    args = main.parse_args([])
    assert (args.dataset, args.image_size, args.batch_size, args.train_steps, args.time_steps,
            args.unet_dim, args.unet_dim_mults, args.learning_rate, args.save_and_sample_every,
            args.schedule, args.loss, args.save_folder) == (
        "digits", 32, 32, 10000, 50, 16, [1, 2, 4, 8], 1e-3, 1000, "cosine", "l1", "./results")
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_missing_dataset_folder_says_how_to_prepare_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--dataset", "afhq", "--data_path", str(tmp_path / "afhq" / "train"),
                   "--save_folder", str(tmp_path / "out"), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "python data_scripts/download_afhq.py --class cat --image_size 32" in err
    assert not (tmp_path / "out").exists()  # failed before creating anything


def test_an_empty_dataset_folder_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"has no \.png/\.jpg images(.|\n)*prepare_mnist\.py"):
        load_dataset("mnist", 32, data_path=tmp_path, data_class="train")


def test_images_of_the_wrong_size_are_a_clear_error(tmp_path):
    folder = tmp_path / "train" / "3"
    folder.mkdir(parents=True)
    Image.new("L", (28, 28)).save(folder / "0.png")
    with pytest.raises(DatasetError, match=r"is 28x28 but --image_size is 32(.|\n)*"
                                           r"prepare_mnist\.py --image_size 32"):
        load_dataset("mnist", 32, data_path=tmp_path, data_class="train")
