"""Train the binary (bit-flip) diffusion model of part 2, or draw its chains.

    python train_binary.py                          # CPU demo: binarized 16x16 digits, offline
    python train_binary.py --dataset mnist --image_size 32 --unet_dim_mults 1 2 4 8
    python train_binary.py --load_path results_binary/model-2000.pt --visualize

Images are binarized (pixel > 0 -> +1, else -1; each channel on its own for RGB). Outputs in
--save_folder (default ./results_binary): model-<step>.pt, sample-<step>.png, loss.csv, loss.png,
and at the end (or with --visualize) chains.png: the forward chain of a few training images and a
reverse chain from fair coins.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from binary_diffusion import BinaryDiffusion, binarize, to_unit_range  # noqa: E402
from image_data import DATASETS, DatasetError, load_dataset  # noqa: E402
from trainer import Trainer, load_checkpoint  # noqa: E402
from unet import Unet  # noqa: E402
from visualize import paper_steps  # noqa: E402

# Flags that define the model; with --load_path they default to the checkpoint's. The defaults are
# the CPU demo (about 4 minutes on one thread, see the README).
MODEL_DEFAULTS = {
    "dataset": "digits",
    "data_path": None,
    "data_class": None,
    "image_size": 16,
    "unet_dim": 16,
    "unet_dim_mults": [1, 2, 4],
    "time_steps": 50,
    "delta": 0.03,
}
CHAIN_IMAGES = 8  # images per column of chains.png


class BinarizedDataset(Dataset):
    """Items (binarize(image),) of a dataset whose items are (image,) in [-1, 1]."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (binarize(self.dataset[index][0]),)


def build_parser():
    p = argparse.ArgumentParser(
        prog="train_binary.py",
        description="Train a binary (bit-flip) diffusion model and sample from it.",
        epilog="Flags marked * default to the checkpoint's values with --load_path.")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="* (default: digits)")
    p.add_argument("--data_path", default=None, help="* as for main.py")
    p.add_argument("--data_class", default=None, help="* as for main.py")
    p.add_argument("--image_size", type=int, default=None, help="* (default: 16)")
    p.add_argument("--unet_dim", type=int, default=None, help="* U-Net base width (default: 16)")
    p.add_argument("--unet_dim_mults", type=int, nargs="+", default=None,
                   help="* width multiplier per resolution level (default: 1 2 4)")
    p.add_argument("--time_steps", type=int, default=None, help="* steps T (default: 50)")
    p.add_argument("--delta", type=float, default=None,
                   help="* flip probability per step, in (0, 0.5] (default: 0.03)")
    p.add_argument("--batch_size", type=int, default=32, help="(default: 32)")
    p.add_argument("--train_steps", type=int, default=1500, help="(default: 1500)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Adam's (default: 1e-3)")
    p.add_argument("--save_and_sample_every", type=int, default=500, help="(default: 500)")
    p.add_argument("--num_samples", type=int, default=64, help="(default: 64)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--save_folder", default="./results_binary",
                   help="(default: ./results_binary)")
    p.add_argument("--load_path", default=None, help="checkpoint to resume or visualize")
    p.add_argument("--visualize", action="store_true",
                   help="with --load_path: only write chains.png")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.checkpoint = None
    if args.visualize and not args.load_path:
        parser.error("--visualize needs --load_path (the checkpoint to visualize)")
    if args.load_path:
        try:
            args.checkpoint = load_checkpoint(args.load_path)
        except ValueError as e:
            parser.error(f"--load_path: {e}")
        saved = args.checkpoint["config"]
        for name in MODEL_DEFAULTS:
            if name in saved:
                setattr(args, name, saved[name])
    for name, default in MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("image_size", "unet_dim", "time_steps", "batch_size", "save_and_sample_every",
                 "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not 0.0 < args.delta <= 0.5:
        parser.error(f"--delta must be in (0, 0.5], got {args.delta}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    if args.unet_dim % 2:
        parser.error(f"--unet_dim must be even, got {args.unet_dim}")
    factor = 2 ** (len(args.unet_dim_mults) - 1)
    if args.image_size % factor:
        parser.error(f"--image_size {args.image_size} must be divisible by {factor} "
                     f"(the U-Net halves it {len(args.unet_dim_mults) - 1} times)")
    if args.dataset == "folder" and args.data_path is None:
        parser.error("--dataset folder needs --data_path")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    return args


def build_diffusion(config):
    model = Unet(config["unet_dim"], dim_mults=tuple(config["unet_dim_mults"]),
                 channels=config["channels"])
    return BinaryDiffusion(model, image_size=config["image_size"], channels=config["channels"],
                           timesteps=config["time_steps"], delta=config["delta"])


@torch.no_grad()
def save_chains(diffusion, y_0, path, seed=0):
    """chains.png, two rows: the forward chain of y_0, and a reverse chain from fair coins.

    Columns at 0/25/50/75/100 % of T (visualize.paper_steps). Forward: Y_s ~ q(Y_s | Y_0) with one
    shared set of uniforms, so a pixel once replaced stays replaced at later columns. Reverse:
    the states of p_sample_loop, in sampling order.
    """
    T = diffusion.num_timesteps
    steps = paper_steps(T, (0.0, 0.25, 0.5, 0.75, 1.0))
    g = torch.Generator().manual_seed(seed)
    u_replace = torch.rand(y_0.shape, generator=g).to(y_0.device)
    u_coin = torch.rand(y_0.shape, generator=g).to(y_0.device)
    forward = []
    for s in steps:
        t = torch.full((y_0.shape[0],), s, dtype=torch.long, device=y_0.device)
        forward.append(y_0 if s == 0 else diffusion.q_sample(y_0, t, u_replace, u_coin))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = torch.where(torch.rand(y_0.shape, generator=g) < 0.5, 1.0, -1.0).to(y_0.device)
        chain = diffusion.p_sample_loop(start, return_chain=True)   # chain[k] = Y_{T-k}
    reverse = [chain[T - s] for s in reversed(steps)]
    path = Path(path)
    fig, axes = plt.subplots(2, len(steps), figsize=(2.2 * len(steps), 5.2))
    rows = (("forward  q(Y_s | Y_0)", forward, steps), ("reverse  p(Y_(s-1) | Y_s)", reverse,
                                                       list(reversed(steps))))
    for row, (name, states, labels) in zip(axes, rows, strict=True):
        for ax, y, s in zip(row, states, labels, strict=True):
            grid = make_grid(to_unit_range(y).float().cpu(), nrow=4, padding=1, pad_value=0.5)
            ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(f"{name.split()[0]}: Y_{s}", fontsize=10)
            ax.axis("off")
    fig.suptitle(f"Binary diffusion chains (T = {T}, delta = {diffusion.delta}): top, the forward "
                 "process from training images; bottom, sampling from fair coins")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    save_folder = Path(args.save_folder)
    try:
        images, channels = load_dataset(args.dataset, args.image_size, args.data_path,
                                        args.data_class)
    except DatasetError as e:
        print(f"train_binary.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    dataset = BinarizedDataset(images)
    config = {name: getattr(args, name) for name in MODEL_DEFAULTS}
    config["unet_dim_mults"] = list(config["unet_dim_mults"])
    config["channels"] = channels
    diffusion = build_diffusion(config)
    n_params = sum(p.numel() for p in diffusion.model.parameters())
    print(f"{args.dataset} (binarized): {len(dataset)} images, {channels}x{args.image_size}x"
          f"{args.image_size}; U-Net {n_params / 1e6:.2f}M parameters; T={args.time_steps}, "
          f"delta={args.delta}; device {args.device}")

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    y_0 = torch.stack([dataset[int(i)][0] for i in order[:CHAIN_IMAGES]]).to(args.device)
    if args.visualize:
        diffusion.model.load_state_dict(args.checkpoint["model"])
        diffusion.to(args.device).eval()
        print(f"saved {save_chains(diffusion, y_0, save_folder / 'chains.png', args.seed)}")
        return

    trainer = Trainer(
        diffusion, dataset, save_folder=save_folder, config=config,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        train_steps=args.train_steps, save_and_sample_every=args.save_and_sample_every,
        num_samples=args.num_samples, device=args.device, seed=args.seed)
    if args.load_path:
        trainer.load(args.load_path)
        print(f"resumed from {args.load_path} at step {trainer.step}")
    losses = trainer.train()
    diffusion.eval()
    path = save_chains(diffusion, y_0, save_folder / "chains.png", args.seed)
    if losses:
        tail = [v for _, v in losses[-100:]]
        print(f"done: step {trainer.step}, mean loss of the last {len(tail)} steps "
              f"{sum(tail) / len(tail):.2f}; outputs in {save_folder} (chains: {path.name})")


if __name__ == "__main__":
    main()
