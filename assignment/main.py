"""Train a DDPM, or visualize a trained one.

    python main.py                                   # train on the embedded 8x8 digits (offline)
    python main.py --dataset afhq --fid              # AFHQ cats (prepare with data_scripts/)
    python main.py --load_path results/model-1000.pt # resume training
    python main.py --load_path results/model-1000.pt --visualize

Outputs go to --save_folder (default ./results): model-<step>.pt, sample-<step>.png, loss.csv,
loss.png, and with --fid, fid.csv and fid.png; --visualize writes forward_process.png and
backward_process.png.
"""

import argparse
import difflib
import sys
from pathlib import Path

# torch and the homework modules are imported where they are needed, so that `--help` and a
# mistyped flag answer at once instead of after the seconds torch takes to import.
# The choices of --dataset, --schedule, --loss and --fast; tests/test_main_cli.py checks that
# they are those of image_data.DATASETS, diffusion.SCHEDULES, diffusion.LOSSES and
# fast_path.FAST_MODES.
DATASETS = ("digits", "afhq", "mnist", "folder")
SCHEDULES = ("cosine", "linear")
LOSSES = ("l1", "l2")
FAST_MODES = ("auto", "graphs", "compile", "off")

# Flags that define the model (and its data); with --load_path they default to the checkpoint's.
MODEL_DEFAULTS = {
    "dataset": "digits",
    "data_path": None,
    "data_class": None,
    "image_size": 32,
    "unet_dim": 16,
    "unet_dim_mults": [1, 2, 4, 8],
    "time_steps": 50,
    "schedule": "cosine",
    "loss": "l1",
}
FID_REFERENCE_MAX = 10_000  # training images used for the FID reference statistics
VISUALIZE_IMAGES = 16       # images shown in the --visualize figures


class _Parser(argparse.ArgumentParser):
    """Takes --batch-size for --batch_size and suggests the closest flag for a mistyped one.
    Abbreviations are off: --train_step must not silently mean --train_steps."""

    def _flags(self):
        return sorted(s for a in self._actions for s in a.option_strings if s.startswith("--"))

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        flags = set(self._flags())
        fixed = []
        for arg in args:
            name, eq, value = arg.partition("=")
            if name.startswith("--") and name not in flags:
                underscored = "--" + name[2:].replace("-", "_")
                if underscored in flags:
                    arg = underscored + eq + value
            fixed.append(arg)
        return super().parse_known_args(fixed, namespace)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            hints = []
            for arg in message.split(":", 1)[1].split():
                if arg.startswith("-") and not arg.lstrip("-").replace(".", "").isdigit():
                    close = difflib.get_close_matches("--" + arg.lstrip("-").replace("-", "_")
                                                      .split("=")[0], self._flags(), n=1,
                                                      cutoff=0.7)
                    hints.append(f"{arg}: did you mean {close[0]}?" if close else
                                 f"{arg}: no such flag")
            if hints:
                message += "\n  " + "\n  ".join(hints) + "\n  (python main.py --help lists all)"
        super().error(message)


def build_parser():
    p = _Parser(
        prog="main.py",
        allow_abbrev=False,
        description="Train a denoising diffusion model (DDPM) and sample from it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags marked * default to the checkpoint's values with --load_path. "
               "--batch-size works as well as --batch_size.")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=None,
                      help="* digits: scikit-learn's 8x8 digits, bundled, no download; "
                           "afhq / mnist: prepared by data_scripts/; folder: your own images "
                           "(default: digits)")
    data.add_argument("--data_path", default=None,
                      help="* folder that holds the class folder (default: data/afhq/train for "
                           "afhq, data/mnist for mnist, next to the homework folder)")
    data.add_argument("--data_class", default=None,
                      help="* subfolder of --data_path with the images (default: cat for afhq, "
                           "train for mnist)")
    data.add_argument("--image_size", type=int, default=None,
                      help="* image height = width; divisible by 2**(len(unet_dim_mults)-1) "
                           "(default: 32)")

    model = p.add_argument_group("model and diffusion")
    model.add_argument("--unet_dim", type=int, default=None, help="* U-Net base width (default: 16)")
    model.add_argument("--unet_dim_mults", type=int, nargs="+", default=None,
                       help="* width multiplier per resolution level (default: 1 2 4 8)")
    model.add_argument("--time_steps", type=int, default=None,
                       help="* number of diffusion steps T (default: 50)")
    model.add_argument("--schedule", choices=SCHEDULES, default=None,
                       help="* noise schedule (default: cosine)")
    model.add_argument("--loss", choices=LOSSES, default=None,
                       help="* l1 or l2 distance between true and predicted noise (default: l1)")

    train = p.add_argument_group("training")
    train.add_argument("--batch_size", type=int, default=32, help="(default: 32)")
    train.add_argument("--train_steps", type=int, default=10000,
                       help="total optimizer steps, counting those before a resume (default: 10000)")
    train.add_argument("--learning_rate", type=float, default=1e-3, help="Adam's (default: 1e-3)")
    train.add_argument("--save_and_sample_every", type=int, default=1000,
                       help="steps between checkpoints, sample grids and FID (default: 1000)")
    train.add_argument("--num_samples", type=int, default=64,
                       help="images per sample grid (default: 64)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--device", default=None,
                       help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    train.add_argument("--fast", choices=FAST_MODES, default="auto",
                       help="how training steps and sampling run: graphs (CUDA graphs, CUDA "
                            "only), compile (torch.compile; a minute or more to compile), off "
                            "(plain PyTorch); auto: graphs on CUDA, off on the CPU. A model the "
                            "fast path cannot trace runs eagerly, with a note (default: auto)")
    train.add_argument("--mixed-precision", action="store_true",
                       help="CUDA only: autocast to bf16 (fp16 where bf16 is unsupported); "
                            "slower at the default model size")
    train.add_argument("--channels-last", action="store_true",
                       help="CUDA only: channels_last memory format; slower at the default size")
    train.add_argument("--threads", type=int, default=None,
                       help="CPU threads of PyTorch (default: PyTorch's, usually one per core); "
                            "1 is often fastest for small models or on a busy machine")

    out = p.add_argument_group("outputs")
    out.add_argument("--save_folder", default="./results",
                     help="where outputs go (default: ./results)")
    out.add_argument("--load_path", default=None,
                     help="checkpoint (model-<step>.pt) to resume from or to visualize")
    out.add_argument("--keep_checkpoints", type=int, default=3,
                     help="keep only the newest N model-<step>.pt in --save_folder (each is "
                          "~28 MB at the default size); 0 keeps all (default: 3)")
    out.add_argument("--fid", action="store_true",
                     help="compute FID (clean-fid) of samples vs. the training images at every "
                          "save step; downloads the Inception weights once (needs internet)")
    out.add_argument("--fid_num_samples", type=int, default=1000,
                     help="generated images per FID evaluation (default: 1000)")
    out.add_argument("--visualize", action="store_true",
                     help="with --load_path: save forward_process.png and backward_process.png "
                          "instead of training")
    out.add_argument("--wandb", action="store_true",
                     help="also log to Weights & Biases (needs `pip install wandb`)")
    return p


def parse_args(argv=None):
    """Parse and check the flags; with --load_path, fill model flags from the checkpoint.

    Exits with status 2 and an argparse message on a bad flag.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors come before importing torch
    import torch

    from trainer import load_checkpoint

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
            given = getattr(args, name)
            if given is not None and given != saved.get(name) and name in saved:
                print(f"note: --{name} {given} ignored; the checkpoint has {saved[name]}",
                      file=sys.stderr)
            if name in saved:
                setattr(args, name, saved[name])
    for name, default in MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)

    positive = ["image_size", "unet_dim", "time_steps", "batch_size", "save_and_sample_every",
                "num_samples", "fid_num_samples"]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.keep_checkpoints < 0:
        parser.error(f"--keep_checkpoints must be >= 0 (0 keeps all), got {args.keep_checkpoints}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    if args.train_steps < 0:
        parser.error(f"--train_steps must be >= 0, got {args.train_steps}")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.unet_dim % 2:
        parser.error(f"--unet_dim must be even, got {args.unet_dim}")
    if min(args.unet_dim_mults) < 1:
        parser.error(f"--unet_dim_mults must be positive integers, got {args.unet_dim_mults}")
    factor = 2 ** (len(args.unet_dim_mults) - 1)
    if args.image_size % factor:
        parser.error(f"--image_size {args.image_size} must be divisible by {factor}: the U-Net "
                     f"with {len(args.unet_dim_mults)} levels (--unet_dim_mults "
                     f"{' '.join(map(str, args.unet_dim_mults))}) halves it "
                     f"{len(args.unet_dim_mults) - 1} times")
    if args.dataset == "folder" and args.data_path is None:
        parser.error("--dataset folder needs --data_path")

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: unknown device {args.device!r} (use cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: only cpu and cuda are supported, got {args.device!r}")
    if device.type == "cpu" and args.fast == "graphs":
        parser.error("--fast graphs needs CUDA; on the CPU use --fast compile or off")
    for name in ("mixed_precision", "channels_last"):
        if getattr(args, name) and device.type == "cpu":
            print(f"note: --{name.replace('_', '-')} applies to CUDA only; ignored on the CPU",
                  file=sys.stderr)
    return args


def fail(message):
    """Report a problem the user can fix, without a traceback, and exit with status 2."""
    print(f"main.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def model_config(args, channels):
    """What a checkpoint needs to rebuild the model and find its data again."""
    config = {name: getattr(args, name) for name in MODEL_DEFAULTS}
    config["unet_dim_mults"] = list(config["unet_dim_mults"])
    config["channels"] = channels
    return config


def build_diffusion(config):
    from diffusion import Diffusion
    from unet import Unet

    model = Unet(config["unet_dim"], dim_mults=tuple(config["unet_dim_mults"]),
                 channels=config["channels"])
    return Diffusion(model, image_size=config["image_size"], channels=config["channels"],
                     timesteps=config["time_steps"], schedule=config["schedule"],
                     loss_type=config["loss"])


def make_fid_evaluator(args, dataset, channels, save_folder):
    import torch

    from diffusion import unnormalize
    from fid import FIDEvaluator
    from image_data import resolve_folder

    n_ref = min(len(dataset), FID_REFERENCE_MAX)

    def reference_images():
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_ref]
        return unnormalize(torch.stack([dataset[int(i)][0] for i in order]))

    where = "" if args.dataset == "digits" else resolve_folder(args.dataset, args.data_path,
                                                                args.data_class).resolve()
    key = f"{args.dataset}|{where}|{args.image_size}px|{channels}ch|n={n_ref}|inception-clean"
    return FIDEvaluator(reference_images, Path(save_folder) / "fid_reference_stats.npz", key,
                        num_samples=args.fid_num_samples,
                        batch_size=256 if args.device.startswith("cuda") else 64,
                        device=args.device)


def make_wandb_logger(args):
    try:
        import wandb
    except ImportError:
        fail("--wandb needs the wandb package: pip install wandb (then `wandb login`)")
    wandb.init(project="ddpm-homework",
               config={k: v for k, v in vars(args).items() if k != "checkpoint"})

    def log(metrics, step, images):
        payload = dict(metrics)
        payload.update({name: wandb.Image(str(path)) for name, path in images.items()})
        if payload:
            wandb.log(payload, step=step)

    return log


def main(argv=None):
    args = parse_args(argv)
    import torch

    from fast_path import resolve_mode
    from image_data import DatasetError, load_dataset
    from trainer import Trainer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    save_folder = Path(args.save_folder)

    try:
        dataset, channels = load_dataset(args.dataset, args.image_size, args.data_path,
                                         args.data_class)
    except DatasetError as e:
        fail(str(e))
    if args.checkpoint is not None and args.checkpoint["config"].get("channels", channels) != channels:
        fail(f"the checkpoint was trained on {args.checkpoint['config']['channels']}-channel "
             f"images but the {args.dataset} images have {channels}")

    config = model_config(args, channels)
    diffusion = build_diffusion(config)
    n_params = sum(p.numel() for p in diffusion.model.parameters())
    print(f"{args.dataset}: {len(dataset)} images, {channels}x{args.image_size}x{args.image_size}; "
          f"U-Net {n_params / 1e6:.2f}M parameters; T={args.time_steps}; device {args.device}, "
          f"fast path {resolve_mode(args.fast, args.device)}")

    if args.visualize:
        from visualize import visualize

        diffusion.model.load_state_dict(args.checkpoint["model"])
        diffusion.to(args.device).eval()
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
        batch = torch.stack([dataset[int(i)][0]
                             for i in order[:min(args.batch_size, VISUALIZE_IMAGES)]])
        paths = visualize(diffusion, batch.to(args.device), save_folder)
        print("saved " + " and ".join(str(p) for p in paths))
        return

    fid_evaluator = None
    if args.fid:
        from fid import FIDUnavailableError

        fid_evaluator = make_fid_evaluator(args, dataset, channels, save_folder)
        try:
            fid_evaluator.feat_model  # noqa: B018 -- load the Inception weights before training
        except FIDUnavailableError as e:
            fail(str(e))

    trainer = Trainer(
        diffusion, dataset, save_folder=save_folder, config=config,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        train_steps=args.train_steps, save_and_sample_every=args.save_and_sample_every,
        num_samples=args.num_samples, device=args.device, seed=args.seed,
        fid_evaluator=fid_evaluator, log_fn=make_wandb_logger(args) if args.wandb else None,
        num_workers=2 if args.dataset != "digits" and args.device.startswith("cuda") else 0,
        fast=args.fast, mixed_precision=args.mixed_precision, channels_last=args.channels_last,
        keep_checkpoints=args.keep_checkpoints)
    if args.load_path:
        trainer.load(args.load_path)
        print(f"resumed from {args.load_path} at step {trainer.step}")
    losses = trainer.train()
    if losses:
        tail = [v for _, v in losses[-100:]]
        print(f"done: step {trainer.step}, mean loss of the last {len(tail)} steps "
              f"{sum(tail) / len(tail):.4f}; outputs in {save_folder}")


if __name__ == "__main__":
    main()
