"""The training loop on the embedded digits: learning, outputs, resume, reproducibility, figures.

Everything runs on the CPU with a tiny model (8x8 images, U-Net width 8, two levels, T = 10).
"""

import csv
import math

import pytest
import torch
from PIL import Image

import main
from image_data import load_dataset
from trainer import Trainer, load_checkpoint
from visualize import backward_process, forward_process, paper_steps, step_label

TINY = dict(image_size=8, unet_dim=8, unet_dim_mults=[1, 2], time_steps=10,
            schedule="cosine", loss="l1")


def make_trainer(save_folder, *, train_steps, seed=0, save_every=1000, lr=1e-3, num_samples=4):
    torch.manual_seed(seed)  # model initialisation, as main.py does
    dataset, channels = load_dataset("digits", TINY["image_size"])
    config = {**TINY, "dataset": "digits", "data_path": None, "data_class": None,
              "channels": channels}
    return Trainer(main.build_diffusion(config), dataset, save_folder=save_folder, config=config,
                   batch_size=16, learning_rate=lr, train_steps=train_steps,
                   save_and_sample_every=save_every, num_samples=num_samples, seed=seed)


def read_losses(path):
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_fifty_steps_lower_the_loss(tmp_path):
    losses = [v for _, v in make_trainer(tmp_path, train_steps=50, lr=2e-3).train()]
    first, last = torch.tensor(losses[:10]), torch.tensor(losses[-10:])
    # The per-step loss is noisy (random t and noise); demand a drop of 3 standard errors of the
    # difference of the two means, not a fixed number.
    margin = 3 * math.sqrt(first.var().item() / 10 + last.var().item() / 10)
    assert first.mean() - last.mean() > margin, (
        f"mean loss of steps 1-10 {first.mean():.4f}, of steps 41-50 {last.mean():.4f}; "
        f"expected a drop of more than {margin:.4f}")


def test_training_writes_checkpoint_sample_grid_and_loss_log(tmp_path):
    make_trainer(tmp_path, train_steps=6, save_every=4, num_samples=9).train()
    # Saves at every multiple of save_every and at the end.
    for step in (4, 6):
        assert (tmp_path / f"model-{step}.pt").is_file()
        with Image.open(tmp_path / f"sample-{step}.png") as grid:
            # 9 samples of 8x8 in a 3x3 grid with save_image's 2-pixel padding
            assert grid.size == (3 * 8 + 4 * 2, 3 * 8 + 4 * 2)
    assert [s for s, _ in read_losses(tmp_path / "loss.csv")] == list(range(1, 7))
    with Image.open(tmp_path / "loss.png") as curve:
        assert curve.size[0] > 100

    ckpt = load_checkpoint(tmp_path / "model-6.pt")
    assert ckpt["step"] == 6
    rebuilt = main.build_diffusion(ckpt["config"])
    rebuilt.model.load_state_dict(ckpt["model"])  # strict: the config rebuilds the same model


def test_resume_continues_the_step_count_and_the_loss_log(tmp_path):
    make_trainer(tmp_path, train_steps=4, save_every=4).train()
    first_run = read_losses(tmp_path / "loss.csv")

    resumed = make_trainer(tmp_path, train_steps=7, save_every=4)
    resumed.load(tmp_path / "model-4.pt")
    assert resumed.step == 4
    # Adam's per-parameter step counter came back with the optimizer state.
    adam_steps = {int(s["step"]) for s in resumed.optimizer.state_dict()["state"].values()}
    assert adam_steps == {4}
    resumed.train()

    assert resumed.step == 7
    assert load_checkpoint(tmp_path / "model-7.pt")["step"] == 7
    log = read_losses(tmp_path / "loss.csv")
    assert [s for s, _ in log] == list(range(1, 8))
    assert log[:4] == first_run


def test_the_same_seed_gives_the_same_losses(tmp_path):
    run = [make_trainer(tmp_path / name, train_steps=5, seed=seed).train()
           for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    assert run[0] == run[1]
    assert run[0] != run[2]  # the seed matters, so the equality above is not vacuous


def test_sampling_for_the_grid_does_not_change_the_training_randomness(tmp_path):
    saving = make_trainer(tmp_path / "a", train_steps=6, save_every=2).train()
    quiet = make_trainer(tmp_path / "b", train_steps=6, save_every=1000).train()
    assert saving == quiet


def test_only_the_newest_checkpoints_are_kept_unless_asked(tmp_path):
    (tmp_path / "model-900.pt").write_bytes(b"")  # a later step, from another run: left alone
    trainer = make_trainer(tmp_path, train_steps=5, save_every=1)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("model-*.pt")) == [
        "model-3.pt", "model-4.pt", "model-5.pt", "model-900.pt"]
    assert len(list(tmp_path.glob("sample-*.png"))) == 5  # samples are all kept

    keep_all = make_trainer(tmp_path / "all", train_steps=4, save_every=1)
    keep_all.keep_checkpoints = 0
    keep_all.train()
    assert len(list((tmp_path / "all").glob("model-*.pt"))) == 4


def test_visualize_writes_both_figures_from_a_checkpoint(tmp_path):
    make_trainer(tmp_path, train_steps=1, save_every=1).train()
    main.main(["--load_path", str(tmp_path / "model-1.pt"), "--visualize",
               "--save_folder", str(tmp_path / "figures"), "--device", "cpu"])
    for name in ("forward_process.png", "backward_process.png"):
        with Image.open(tmp_path / "figures" / name) as figure:
            assert figure.size[0] > 200 and figure.size[1] > 200


def test_process_figures_show_the_right_states():
    trainer = make_trainer("unused", train_steps=0)
    diffusion = trainer.diffusion.eval()
    T = diffusion.num_timesteps
    steps = paper_steps(T)
    assert steps == [0, 3, 5, 8, 10]  # round half up of (0, .25, .5, .75, 1) * 10
    assert paper_steps(50) == [0, 13, 25, 38, 50]
    # Each label names the step shown and its own fraction of T (not the nominal quarter).
    assert [step_label(s, 50) for s in paper_steps(50)] == [
        "x_0 (0% of T)", "x_13 (26% of T)", "x_25 (50% of T)", "x_38 (76% of T)",
        "x_50 (100% of T)"]

    x_0 = torch.rand(2, 1, 8, 8) * 2 - 1
    forward = forward_process(diffusion, x_0, steps)
    assert torch.equal(forward[0], x_0)  # x_0 is the clean batch
    noise = torch.randn_like(x_0)
    t = torch.full((2,), T - 1, dtype=torch.long)
    torch.testing.assert_close(forward_process(diffusion, x_0, [T], noise)[0],
                               diffusion.q_sample(x_0, t, noise))

    x_T = torch.randn(2, 1, 8, 8)
    torch.manual_seed(1)
    backward = backward_process(diffusion, x_T, steps)
    torch.manual_seed(1)
    final = diffusion.p_sample_loop(x_T)
    # Chronological: starts at the given noisy batch, ends at the sample.
    torch.testing.assert_close(backward[0], ((x_T + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(backward[-1], final)
    assert len(backward) == len(steps)


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_folder_dataset_infers_channels_and_scales_to_minus_one_one(tmp_path, mode, channels):
    folder = tmp_path / "imgs" / "cls" / "nested"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new(mode, (8, 8), color=(255 if mode == "L" else (255, 0, 0)) if i else 0).save(
            folder / f"{i}.png")
    dataset, got_channels = load_dataset("folder", 8, data_path=tmp_path / "imgs", data_class="cls")
    assert got_channels == channels and len(dataset) == 3
    images = torch.stack([dataset[i][0] for i in range(3)])
    assert images.shape == (3, channels, 8, 8)
    assert images.min() == -1.0 and images.max() == 1.0


def test_digits_dataset_is_in_minus_one_one_at_the_requested_size():
    dataset, channels = load_dataset("digits", 16)
    images = dataset.tensors[0]
    assert channels == 1 and images.shape == (1797, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() == -1 and images.max() > 0.9  # black background, bright strokes


def test_main_resumes_from_a_checkpoint_with_its_model_settings(tmp_path, capsys):
    common = ["--save_folder", str(tmp_path), "--device", "cpu", "--batch_size", "8",
              "--num_samples", "4", "--save_and_sample_every", "2"]
    main.main(["--image_size", "8", "--unet_dim", "8", "--unet_dim_mults", "1", "2",
               "--time_steps", "5", "--train_steps", "2", *common])
    # The model flags are left out here: they come from the checkpoint.
    main.main(["--load_path", str(tmp_path / "model-2.pt"), "--train_steps", "4", *common])
    assert "resumed from" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "model-4.pt")
    assert ckpt["step"] == 4
    assert (ckpt["config"]["image_size"], ckpt["config"]["unet_dim"],
            ckpt["config"]["time_steps"]) == (8, 8, 5)
    assert [s for s, _ in read_losses(tmp_path / "loss.csv")] == [1, 2, 3, 4]
