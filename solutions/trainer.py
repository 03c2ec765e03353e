"""Training loop: Adam on the diffusion loss, with checkpoints, sample grids and curves.

Every `save_and_sample_every` steps (and at the end) the trainer writes to the save folder:
    model-<step>.pt     model + optimizer state, step, and the config that rebuilds the model
                        (only the last `keep_checkpoints` are kept: each is ~28 MB at the
                        default model size)
    sample-<step>.png   a grid of generated images
    loss.csv, loss.png  the training loss of every step, and its curve
    fid.csv, fid.png    with an FID evaluator: FID at each save step
"""

import csv
import math
from contextlib import nullcontext
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.utils import save_image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import fast_path  # noqa: E402


def checkpoint_path(save_folder, step):
    return Path(save_folder) / f"model-{step}.pt"


def load_checkpoint(path):
    """Read a checkpoint written by Trainer.save (on the CPU).

    Returns:
        dict with keys step, model, optimizer, scaler, config.
    Raises:
        ValueError: the file is missing or is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"could not read checkpoint {path}: {e}") from e
    missing = {"step", "model", "optimizer", "config"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a checkpoint written by main.py (missing {sorted(missing)})")
    return ckpt


def _read_csv(path, up_to_step):
    """Rows (step, value) of a two-column CSV with step <= up_to_step; [] when absent."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        rows = [(int(r[0]), float(r[1])) for r in list(csv.reader(f))[1:] if r]
    return [(s, v) for s, v in rows if s <= up_to_step]


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _plot_curve(path, rows, ylabel, title, smooth=False):
    steps = [s for s, _ in rows]
    values = [v for _, v in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    if smooth and len(values) >= 20:
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.7, label="per step")
        window = max(2, len(values) // 50)
        averaged = torch.tensor(values).unfold(0, window, 1).mean(1).tolist()
        ax.plot(steps[window - 1:], averaged, color="tab:blue",
                label=f"moving average over {window} steps")
        ax.legend()
    else:
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, color="tab:blue")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Trainer:
    """Train `diffusion` on `dataset` with Adam.

    Args:
        diffusion: a Diffusion wrapping the U-Net; moved to `device` here.
        dataset: items are 1-tuples (image,) with image (C, H, W) in [-1, 1].
        save_folder: where checkpoints, samples, curves go (created).
        config: dict saved in every checkpoint; main.py rebuilds the model from it.
        batch_size, learning_rate, train_steps: the optimisation; train_steps is the total
            step count, including steps done before a resume.
        save_and_sample_every: checkpoint/sample/FID period in steps.
        num_samples: images in each sample grid.
        device: "cpu" or "cuda".
        fast: "auto", "graphs", "compile" or "off": how training steps and sampling run (see
            fast_path.py); auto is CUDA graphs on CUDA and eager on the CPU. A fast path that
            cannot trace the model falls back to eager with one line saying why.
        mixed_precision: on CUDA, autocast to bf16 (fp16 with a GradScaler where bf16 is not
            supported). Off by default: at the homework's size it measures slower.
        channels_last: on CUDA, the channels_last memory format (also slower at this size).
        compile_backend: torch.compile's backend for fast="compile" (tests use "eager").
        seed: seeds data order and sampling; the caller seeds the model's initialisation.
        fid_evaluator: optional callable (diffusion, sampler=n -> images) -> FID (see
            fid.FIDEvaluator); the trainer passes its fast-path sampler.
        log_fn: optional callable (metrics: dict, step: int, images: dict name -> path),
            e.g. for Weights & Biases.
        num_workers: DataLoader worker processes.
        keep_checkpoints: how many of the newest model-<step>.pt to keep in save_folder
            (older ones are deleted after each save); 0 keeps all.
    """

    def __init__(self, diffusion, dataset, *, save_folder, config=None, batch_size=32,
                 learning_rate=1e-3, train_steps=10000, save_and_sample_every=1000,
                 num_samples=64, device="cpu", seed=0, fid_evaluator=None, log_fn=None,
                 num_workers=0, fast="auto", mixed_precision=False, channels_last=False,
                 compile_backend="inductor", keep_checkpoints=3):
        self.device = torch.device(device)
        self.use_cuda = self.device.type == "cuda"
        self.diffusion = diffusion.to(self.device)
        self.channels_last = bool(channels_last) and self.use_cuda
        if self.channels_last:
            self.diffusion.to(memory_format=torch.channels_last)
        if self.use_cuda:
            torch.backends.cudnn.benchmark = True
        self.fast = fast_path.resolve_mode(fast, self.device)
        self.compile_backend = compile_backend
        self.dataset = dataset
        self.save_folder = Path(save_folder)
        self.save_folder.mkdir(parents=True, exist_ok=True)
        self.config = dict(config or {})
        self.batch_size = int(batch_size)
        self.train_steps = int(train_steps)
        self.save_and_sample_every = int(save_and_sample_every)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.fid_evaluator = fid_evaluator
        self.log_fn = log_fn
        self.num_workers = int(num_workers)
        self.keep_checkpoints = int(keep_checkpoints)

        # A CUDA graph can only capture Adam with its step counters on the GPU (capturable).
        self.optimizer = torch.optim.Adam(self.diffusion.model.parameters(), lr=learning_rate,
                                          capturable=self.fast == "graphs" and self.use_cuda)
        self.amp_dtype = None
        if self.use_cuda and mixed_precision:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Loss scaling is only needed for fp16 (bf16 has float32's exponent range).
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.step = 0
        self.losses = []  # (step, loss)
        self.fids = []    # (step, fid)
        self._train_step = None  # built at the first train(), after a possible load()
        self._sampler = None
        self.log = tqdm.write  # where a fast path's fallback note goes

    # ------------------------------------------------------------------ checkpoints

    def save(self):
        """Write model-<step>.pt; returns its path."""
        path = checkpoint_path(self.save_folder, self.step)
        torch.save({
            "step": self.step,
            "model": self.diffusion.model.state_dict(),
            "optimizer": fast_path.portable_optimizer_state(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict(),
            "config": self.config,
        }, path)
        return path

    def prune_checkpoints(self):
        """Delete all but the newest `keep_checkpoints` model-<step>.pt up to this step (checkpoints
        of later steps, from another run, are left alone); returns the deleted paths."""
        if self.keep_checkpoints <= 0:
            return []
        found = []
        for path in self.save_folder.glob("model-*.pt"):
            stem = path.stem.removeprefix("model-")
            if stem.isdigit() and int(stem) <= self.step:
                found.append((int(stem), path))
        old = [path for _, path in sorted(found)[:-self.keep_checkpoints]]
        for path in old:
            path.unlink(missing_ok=True)
        return old

    def load(self, path):
        """Resume from a checkpoint: model, optimizer, step, and the logs up to that step."""
        ckpt = load_checkpoint(path)
        self.diffusion.model.load_state_dict(ckpt["model"])
        fast_path.load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self._train_step = None  # a captured graph would still point at the old Adam state
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.losses = _read_csv(self.save_folder / "loss.csv", self.step)
        self.fids = _read_csv(self.save_folder / "fid.csv", self.step)

    # ------------------------------------------------------------------ training

    def _batches(self):
        """Endless shuffled batches; the order depends on the seed and the starting step."""
        generator = torch.Generator().manual_seed(self.seed + self.step)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, generator=generator,
            drop_last=len(self.dataset) >= self.batch_size, num_workers=self.num_workers,
            pin_memory=self.use_cuda, persistent_workers=self.num_workers > 0)
        while True:
            for (images,) in loader:
                yield images

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        # No weight-cast cache: a CUDA graph cannot capture one (and one forward gains little).
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype, cache_enabled=False)

    @property
    def train_step(self):
        """images -> loss: one optimizer step through the fast path (built on first use)."""
        if self._train_step is None:
            self._train_step = fast_path.make_train_step(
                self.diffusion, self.optimizer, self.fast, autocast=self._autocast,
                scaler=self.scaler, compile_backend=self.compile_backend, log=self.log)
        return self._train_step

    @property
    def sampler(self):
        """n -> n images in [0, 1] on the device, through the fast path (built on first use)."""
        if self._sampler is None:
            self._sampler = fast_path.make_sampler(
                self.diffusion, self.fast, compile_backend=self.compile_backend, log=self.log)
        return self._sampler

    def run_step(self, images):
        """One optimizer step on a batch from the loader; returns its loss (on the device)."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = self.train_step(images)
        self.step += 1
        return loss

    def train(self):
        """Train until self.train_steps; returns the list of (step, loss)."""
        if self.step >= self.train_steps:
            print(f"Already at step {self.step} >= --train_steps {self.train_steps}; nothing to train.")
            return self.losses
        # Reseed per start step so a resumed run does not replay the first run's randomness.
        torch.manual_seed(self.seed + self.step)
        batches = self._batches()
        self.diffusion.train()
        pending = []  # losses not yet copied to the CPU (avoids a GPU sync every step)
        with tqdm(total=self.train_steps, initial=self.step, desc="training",
                  dynamic_ncols=True) as bar:
            while self.step < self.train_steps:
                loss = self.run_step(next(batches))
                pending.append((self.step, loss))

                save_now = (self.step % self.save_and_sample_every == 0
                            or self.step == self.train_steps)
                if len(pending) >= 25 or save_now or not self.use_cuda:
                    values = torch.stack([v for _, v in pending]).float().cpu().tolist()
                    self.losses.extend(zip([s for s, _ in pending], values, strict=True))
                    bar.update(len(pending))
                    bar.set_postfix(loss=f"{values[-1]:.4f}")
                    if self.log_fn is not None:
                        self.log_fn({"loss": values[-1]}, self.step, {})
                    pending = []
                if save_now:
                    self.save_and_sample()
        return self.losses

    @torch.no_grad()
    def sample(self, n):
        """n images in [0, 1] from the current model; the global RNG is left as it was."""
        devices = [self.device] if self.use_cuda else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(self.seed + self.step)  # same samples for the same step
            self.diffusion.eval()
            images = self.sampler(n)
            self.diffusion.train()
        return images.float().cpu()

    def evaluate_fid(self):
        devices = [self.device] if self.use_cuda else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(self.seed + self.step)
            self.diffusion.eval()
            score = self.fid_evaluator(self.diffusion, sampler=self.sampler)
            self.diffusion.train()
        return score

    def save_and_sample(self):
        """Checkpoint, sample grid, loss log/curve and (with an evaluator) FID at self.step."""
        ckpt = self.save()
        self.prune_checkpoints()
        sample_path = self.save_folder / f"sample-{self.step}.png"
        save_image(self.sample(self.num_samples), sample_path,
                   nrow=max(1, int(math.sqrt(self.num_samples))))
        self.write_loss_log()
        metrics = {}
        if self.fid_evaluator is not None:
            score = self.evaluate_fid()
            self.fids.append((self.step, score))
            _write_csv(self.save_folder / "fid.csv", ["step", "fid"], self.fids)
            _plot_curve(self.save_folder / "fid.png", self.fids, "FID", "FID vs training step")
            metrics["fid"] = score
            tqdm.write(f"step {self.step}: FID {score:.2f}")
        tqdm.write(f"step {self.step}: saved {ckpt.name} and {sample_path.name}")
        if self.log_fn is not None:
            self.log_fn(metrics, self.step, {"samples": sample_path})

    def write_loss_log(self):
        if not self.losses:
            return
        _write_csv(self.save_folder / "loss.csv", ["step", "loss"], self.losses)
        _plot_curve(self.save_folder / "loss.png", self.losses, "loss",
                    "Training loss", smooth=True)
