"""Training and sampling speed at the Colab configuration, and our sampler against diffusers.

Measures, on the available device (CUDA if present, else CPU, default thread count):
  * training steps/s of a bare eager step (one Adam step of Diffusion(Unet) on a fixed batch),
    of our Trainer as main.py runs it (data loader included, its default --fast), and of the
    Trainer forced onto a fast path (CUDA graphs by default; on the CPU that falls back to
    eager, which the row says), each also as a ratio to the bare eager step;
  * sampling images/s of our `Diffusion.p_sample_loop`, of the Trainer's fast-path sampler, and
    of the same reverse process driven by the library DDPM scheduler of diffusers
    (`DDPMScheduler` given our cosine betas), with the same U-Net weights. The ratios to
    diffusers should be >= 1: eager, the U-Net dominates both, so that ratio is ~1 and shows
    little; the overhead of the two step implementations alone is measured with the U-Net
    replaced by a free stand-in (`sampler_overhead_ms`);
  * on CUDA, the time to generate the 1000 images of one FID evaluation through the fast path.

Before timing, it checks that the two samplers are the same algorithm: started from the same
x_T and fed the same z at every step, they must give the same images up to float32 rounding
(see `check_same_images` for how the tolerance is derived). A speed comparison of two
different computations would mean nothing.
"""

import copy
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"
if str(SOLUTIONS) not in sys.path:
    sys.path.insert(0, str(SOLUTIONS))

import fast_path  # noqa: E402
from diffusion import Diffusion, cosine_schedule, normalize, unnormalize  # noqa: E402
from trainer import Trainer  # noqa: E402
from unet import Unet  # noqa: E402

# Float32 unit roundoff, the scale of one rounding error.
EPS32 = torch.finfo(torch.float32).eps / 2
# Allowed disagreement between two float32 implementations, in units of our own measured
# float32 error (see check_same_images).
TOLERANCE_FACTOR = 20.0


@dataclass(frozen=True)
class Config:
    """What is benchmarked. The defaults are the Colab run of the handout."""

    image_size: int = 32
    channels: int = 3
    dim: int = 16
    dim_mults: tuple = (1, 2, 4, 8)
    batch_size: int = 32
    timesteps: int = 50
    learning_rate: float = 1e-3

    def describe(self):
        mults = " ".join(map(str, self.dim_mults))
        return (f"{self.image_size}x{self.image_size}x{self.channels}, Unet dim {self.dim} "
                f"mults {mults}, batch {self.batch_size}, T={self.timesteps}")


COLAB = Config()


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_diffusion(config, device, seed=0):
    """Diffusion(Unet) with the cosine schedule and L1 loss, as main.py builds it."""
    torch.manual_seed(seed)
    model = Unet(config.dim, config.dim_mults, channels=config.channels)
    diffusion = Diffusion(model, image_size=config.image_size, channels=config.channels,
                          timesteps=config.timesteps, schedule="cosine", loss_type="l1")
    return diffusion.to(device)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, *, warmup, repeats, device):
    """Seconds of each of `repeats` calls of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


# ---------------------------------------------------------------- training

def training_steps_per_second(config=COLAB, device=None, *, steps=5, warmup=1, repeats=3):
    """Median training steps/s: zero_grad, loss = diffusion(x_0), backward, Adam step.

    One fixed random batch in [-1, 1] stands in for the data, so this measures the model and the
    optimizer, not image loading. `warmup` untimed, then `repeats` timed calls, each running
    `steps` consecutive steps.
    """
    device = torch.device(device or default_device())
    diffusion = build_diffusion(config, device)
    diffusion.train()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=config.learning_rate)
    shape = (config.batch_size, config.channels, config.image_size, config.image_size)
    x_0 = normalize(torch.rand(shape, device=device))

    def train_steps():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = diffusion(x_0)
            loss.backward()
            optimizer.step()

    seconds = time_runs(train_steps, warmup=warmup, repeats=repeats, device=device)
    return steps / statistics.median(seconds)


def make_trainer(config, device, fast, save_folder, *, dataset_size=256, seed=0):
    """Our Trainer as main.py builds it, on random images in [-1, 1] held in memory."""
    diffusion = build_diffusion(config, device, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    images = normalize(torch.rand(dataset_size, config.channels, config.image_size,
                                  config.image_size, generator=generator))
    dataset = torch.utils.data.TensorDataset(images)
    return Trainer(diffusion, dataset, save_folder=save_folder, batch_size=config.batch_size,
                   learning_rate=config.learning_rate, device=device, seed=seed, fast=fast)


def trainer_steps_per_second(config=COLAB, device=None, fast="auto", *, steps=5, warmup=None,
                             repeats=3, log=print):
    """Median steps/s of Trainer.run_step on its own data loader, through `fast`.

    `warmup` untimed steps first (default: enough for CUDA graphs to warm up and capture); each
    of `repeats` timed calls runs `steps` steps. Returns dict: steps_per_s, path (the path in
    use after any fallback: graphs, compile or off) and failure (why it fell back, or None).
    """
    device = torch.device(device or default_device())
    warmup = fast_path.GRAPH_WARMUP_STEPS + 2 if warmup is None else warmup
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(config, device, fast, folder)
        trainer.log = log
        batches = trainer._batches()
        trainer.diffusion.train()

        def train_steps():
            for _ in range(steps):
                loss = trainer.run_step(next(batches))
            return loss

        for _ in range(warmup):
            trainer.run_step(next(batches))
        seconds = time_runs(train_steps, warmup=0, repeats=repeats, device=device)
        step = trainer.train_step
        return {"steps_per_s": steps / statistics.median(seconds), "path": step.name,
                "failure": step.failure}


def training_rates(config=COLAB, device=None, modes=("auto",), *, steps=5, repeats=3,
                   log=print):
    """Steps/s of a bare eager step and of our Trainer under each --fast mode, from one run.

    Timed calls of the bare step and of each trainer alternate (see `interleaved`), so load
    changes on a shared machine hit all alike; each call runs `steps` steps, after the warm-up
    (and capture or compilation) of each.

    Returns:
        dict: bare (steps/s), noise (largest relative distance of one run from its median),
        and per mode: {steps_per_s, ratio (to bare), path (after any fallback), failure}.
    """
    device = torch.device(device or default_device())
    diffusion = build_diffusion(config, device)
    diffusion.train()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=config.learning_rate)
    x_0 = normalize(torch.rand(config.batch_size, config.channels, config.image_size,
                               config.image_size, device=device))

    def bare():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            diffusion(x_0).backward()
            optimizer.step()

    runs = {"bare": bare}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {}
        for mode in dict.fromkeys(modes):
            trainer = trainers[mode] = make_trainer(config, device, mode, folder)
            trainer.log = log
            trainer.diffusion.train()
            batches = trainer._batches()
            for _ in range(fast_path.GRAPH_WARMUP_STEPS + 2):
                trainer.run_step(next(batches))
            runs[mode] = (lambda t=trainer, b=batches:
                          [t.run_step(next(b)) for _ in range(steps)])
        time_runs(bare, warmup=1, repeats=0, device=device)
        seconds = {name: [] for name in runs}
        for name, fn in interleaved(runs, repeats):
            seconds[name] += time_runs(fn, warmup=0, repeats=1, device=device)
    rate = {name: steps / statistics.median(s) for name, s in seconds.items()}
    noise = max(abs(x / statistics.median(s) - 1) for s in seconds.values() for x in s)
    result = {"bare": rate["bare"], "noise": noise}
    for mode, trainer in trainers.items():
        result[mode] = {"steps_per_s": rate[mode], "ratio": rate[mode] / rate["bare"],
                        "path": trainer.train_step.name, "failure": trainer.train_step.failure}
    return result


# ---------------------------------------------------------------- the two samplers

def diffusers_scheduler(timesteps):
    """diffusers' DDPMScheduler with our cosine betas, eps-prediction, x0 clipped to [-1, 1]."""
    from diffusers import DDPMScheduler

    betas = (1.0 - cosine_schedule(timesteps)).numpy()  # float64; diffusers stores float32
    scheduler = DDPMScheduler(num_train_timesteps=timesteps, trained_betas=betas,
                              clip_sample=True, clip_sample_range=1.0,
                              variance_type="fixed_small", prediction_type="epsilon")
    scheduler.set_timesteps(timesteps)  # every step: T-1, ..., 0
    return scheduler


@torch.no_grad()
def diffusers_sample(model, scheduler, x_T, generator=None):
    """The standard diffusers DDPM loop from x_T; returns images in [0, 1] like p_sample_loop.

    `generator` (a CPU torch.Generator) supplies the z of each step, as scheduler.step draws it.
    """
    x = x_T
    for t in scheduler.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        eps = model(x, t_batch)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return unnormalize(x)


@contextmanager
def noise_from(diffusion, generator):
    """Make diffusion.noise_like draw z in float32 from a CPU `generator`, as diffusers does.

    diffusers' randn_tensor draws on the generator's device in the sample's dtype and then
    moves the result, so with the same generator state both samplers get the same z. The draw
    is always float32 and then cast to the model's dtype, so a float64 copy sees the same values.
    """
    def noise_like(shape, device):
        dtype = next(diffusion.model.parameters()).dtype
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    diffusion.noise_like = noise_like  # an instance attribute shadows the method
    try:
        yield diffusion
    finally:
        del diffusion.noise_like


def sample_with_seed(sample_fn, shape, seed, device):
    """sample_fn(x_T, generator) with x_T drawn first from a fresh CPU generator (float32)."""
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=generator).to(device)
    return sample_fn(x_T, generator)


@torch.no_grad()
def check_same_images(diffusion, scheduler, batch_size, seed=0):
    """Run both samplers from the same x_T with the same z sequence and compare the images.

    Tolerance, derived rather than guessed: the float32 error of *our* sampler is measured by
    running it again in float64 (same weights, same x_T and z, rounding ~1e-16), giving
    err32 = max |ours32 - ours64|. diffusers does the same arithmetic in float32 in another
    order, and forms abar by a float32 cumprod, so its error is of the same kind and size; two
    such implementations agree within a small multiple of err32. We allow
    TOLERANCE_FACTOR * max(err32, T * EPS32). A modelling difference (variance choice, no
    clipping, an off-by-one step) is orders of magnitude larger; tests/test_bench.py shows it.

    Args:
        diffusion: our Diffusion (float32), its model shared with the diffusers loop.
        scheduler: from diffusers_scheduler(diffusion.num_timesteps), or any DDPM scheduler.
    Returns:
        dict: max_abs_diff (ours vs diffusers, images in [0, 1]), err32, tolerance, same.
    """
    device = diffusion.alphas.device
    T = diffusion.num_timesteps
    shape = (batch_size, diffusion.channels, diffusion.image_size, diffusion.image_size)

    def ours(d):
        def run(x_T, generator):
            with noise_from(d, generator):
                return d.p_sample_loop(x_T.to(d.alphas.dtype))
        return run

    def theirs(x_T, generator):
        return diffusers_sample(diffusion.model, scheduler, x_T, generator)

    ours32 = sample_with_seed(ours(diffusion), shape, seed, device)
    theirs32 = sample_with_seed(theirs, shape, seed, device)
    exact = copy.deepcopy(diffusion).double()  # the same float32 numbers, widened
    ours64 = sample_with_seed(ours(exact), shape, seed, device)

    err32 = (ours32.double() - ours64).abs().max().item()
    max_diff = (ours32 - theirs32).abs().max().item()
    tolerance = TOLERANCE_FACTOR * max(err32, T * EPS32)
    return {"max_abs_diff": max_diff, "err32": err32, "tolerance": tolerance,
            "same": max_diff <= tolerance}


# ---------------------------------------------------------------- sampling speed

def interleaved(runs, repeats):
    """(name, fn) pairs in A B B A A B ... order, so neither sampler always runs first."""
    items = list(runs.items())
    for i in range(repeats):
        yield from (items if i % 2 == 0 else items[::-1])


def sampling_images_per_second(config=COLAB, device=None, *, warmup=1, repeats=3,
                               check_batch=8, fast=None, log=None):
    """Images/s of both samplers with the same U-Net, after checking they agree.

    Timed calls alternate (ours, diffusers, diffusers, ours, ...) so that load changes on a shared
    machine hit both alike and neither always runs first; each call samples config.batch_size
    images through all T steps. With `fast` (a --fast mode), the Trainer's fast-path sampler
    of the same model is timed too (after the calls it needs to warm up and capture).

    Returns:
        dict: ours and diffusers (median images/s), ratio (ours / diffusers), noise (largest
        relative distance of one run from its median), check (see
        check_same_images, run on `check_batch` images first); with `fast` also fast
        (images/s), fast_ratio (fast / diffusers), fast_path and fast_failure.
    """
    device = torch.device(device or default_device())
    diffusion = build_diffusion(config, device).eval()
    scheduler = diffusers_scheduler(config.timesteps)
    check = check_same_images(diffusion, scheduler, check_batch)

    shape = (config.batch_size, config.channels, config.image_size, config.image_size)
    x_T = torch.randn(shape, device=device)
    runs = {"ours": lambda: diffusion.p_sample_loop(x_T),
            "diffusers": lambda: diffusers_sample(diffusion.model, scheduler, x_T)}
    sampler = None
    if fast is not None:
        sampler = fast_path.make_sampler(diffusion, fast_path.resolve_mode(fast, device),
                                         log=log or print)
        runs["fast"] = lambda: sampler(config.batch_size)
        time_runs(runs["fast"], warmup=1, repeats=0, device=device)  # graphs: the warm-up
    seconds = {name: [] for name in runs}
    for fn in runs.values():
        time_runs(fn, warmup=warmup, repeats=0, device=device)
    for name, fn in interleaved(runs, repeats):
        seconds[name] += time_runs(fn, warmup=0, repeats=1, device=device)
    rate = {name: config.batch_size / statistics.median(s) for name, s in seconds.items()}
    # Run-to-run noise: the largest relative distance of a single run from its sampler's median.
    noise = max(abs(x / statistics.median(s) - 1) for s in seconds.values() for x in s)
    result = {**rate, "ratio": rate["ours"] / rate["diffusers"], "noise": noise, "check": check}
    if sampler is not None:
        result.update(fast_ratio=rate["fast"] / rate["diffusers"], fast_path=sampler.name,
                      fast_failure=sampler.failure)
    return result


def fid_generation_seconds(config=COLAB, device=None, fast="auto", *, num_images=1000,
                           batch_size=256, repeats=3):
    """Median seconds to generate the images of one FID evaluation, as the Trainer does.

    Batches as fid.FIDEvaluator splits them (equal sizes, at most `batch_size`), through the
    fast-path sampler; the first evaluation (warm-up and capture) is untimed.
    """
    device = torch.device(device or default_device())
    diffusion = build_diffusion(config, device).eval()
    sampler = fast_path.make_sampler(diffusion, fast_path.resolve_mode(fast, device))
    batches = -(-num_images // batch_size)
    sizes = [num_images // batches + (i < num_images % batches) for i in range(batches)]

    def generate():
        with torch.no_grad():
            for n in sizes:
                sampler(n)

    seconds = time_runs(generate, warmup=2, repeats=repeats, device=device)
    return {"seconds": statistics.median(seconds), "path": sampler.name}


class _FreeModel(torch.nn.Module):
    """Stands in for the U-Net at almost no cost: eps_theta(x, t) = 0 * x."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return x * self.scale


@torch.no_grad()
def sampler_overhead_ms(config=COLAB, device=None, *, repeats=15):
    """Milliseconds per reverse step spent outside the network, ours and diffusers.

    With the real U-Net both samplers spend nearly all their time in the same forward passes, so
    their images/s differ by less than the timing noise of a busy machine. Replacing the network
    by a free stand-in measures what the two step implementations themselves cost.

    Returns:
        dict: ours, diffusers (median ms per step, batch config.batch_size).
    """
    device = torch.device(device or default_device())
    diffusion = Diffusion(_FreeModel(), image_size=config.image_size, channels=config.channels,
                          timesteps=config.timesteps).to(device)
    scheduler = diffusers_scheduler(config.timesteps)
    x_T = torch.randn(config.batch_size, config.channels, config.image_size, config.image_size,
                      device=device)
    runs = {"ours": lambda: diffusion.p_sample_loop(x_T),
            "diffusers": lambda: diffusers_sample(diffusion.model, scheduler, x_T)}
    seconds = {name: [] for name in runs}
    for fn in runs.values():
        time_runs(fn, warmup=2, repeats=0, device=device)
    for name, fn in interleaved(runs, repeats):
        seconds[name] += time_runs(fn, warmup=0, repeats=1, device=device)
    return {name: 1e3 * statistics.median(s) / config.timesteps for name, s in seconds.items()}


# ---------------------------------------------------------------- report

def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    p.add_argument("--train_steps", type=int, default=5, help="training steps per timed repeat")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's default)")
    p.add_argument("--fast", choices=fast_path.FAST_MODES, default="graphs",
                   help="the fast path of the 'fast path' rows (default: graphs; on the CPU it "
                        "falls back to eager, which the rows say; compile takes minutes there)")
    p.add_argument("--fid_images", type=int, default=None,
                   help="images of the FID-generation row (default: 1000 on CUDA, 0 = skip, "
                        "on the CPU)")
    p.add_argument("--fid_batch", type=int, default=256,
                   help="sampling batch of the FID-generation row (default: 256, main.py's on "
                        "CUDA)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or default_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    print(f"training and sampling at the Colab configuration: {COLAB.describe()}")
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats} repeats", flush=True)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device.type == "cpu" and load > cores:
        # Busy cores make every multi-threaded op wait for a descheduled thread.
        hint = " (try --threads 1 on a shared machine)" if torch.get_num_threads() > 1 else ""
        print(f"  warning: load average {load:.1f} on {cores} cores; CPU timings will be slow "
              f"and noisy{hint}", flush=True)

    def row(label, value, note=""):
        print(f"  {label:<40} {value:<16} {note}".rstrip(), flush=True)

    def fell_back(failure):
        return f"; fell back to eager: {failure}" if failure else ""

    quiet = lambda message: None  # noqa: E731 -- the rows say it, shorter
    training = training_rates(COLAB, device, ("auto", args.fast), steps=args.train_steps,
                              repeats=args.repeats, log=quiet)
    bare = training["bare"]
    row("training, bare eager step", f"{bare:.2f} steps/s",
        f"{bare * COLAB.batch_size:.1f} images/s")
    for label, mode in (("training, our trainer (--fast auto)", "auto"),
                        (f"training, fast path (--fast {args.fast})", args.fast)):
        measured = training[mode]
        row(label, f"{measured['steps_per_s']:.2f} steps/s",
            f"{measured['ratio']:.2f}x bare eager; path: {measured['path']}"
            f"{fell_back(measured['failure'])}")
    row("", "", f"(one run differs from the next by up to +-{100 * training['noise']:.0f} %)")
    sampling = sampling_images_per_second(COLAB, device, repeats=args.repeats, fast=args.fast,
                                          log=quiet)
    check = sampling["check"]
    row("sampling, ours (eager)", f"{sampling['ours']:.2f} images/s")
    row(f"sampling, ours (--fast {args.fast})", f"{sampling['fast']:.2f} images/s",
        f"path: {sampling['fast_path']}{fell_back(sampling['fast_failure'])}")
    row("sampling, diffusers DDPMScheduler", f"{sampling['diffusers']:.2f} images/s")

    def verdict(ratio):
        if ratio >= 1:
            return "goal >= 1: met"
        if ratio >= 1 - sampling["noise"]:
            return f"goal >= 1: tied within run-to-run noise (+-{100 * sampling['noise']:.0f} %)"
        return "goal >= 1: NOT MET"

    row("ratio ours (eager) / diffusers", f"{sampling['ratio']:.3f}", verdict(sampling["ratio"]))
    row(f"ratio ours (--fast {args.fast}) / diffusers", f"{sampling['fast_ratio']:.3f}",
        verdict(sampling["fast_ratio"]))
    fid_images = args.fid_images
    if fid_images is None:
        fid_images = 1000 if device.type == "cuda" else 0
    if fid_images > 0:
        fid = fid_generation_seconds(COLAB, device, args.fast, num_images=fid_images,
                                     batch_size=args.fid_batch, repeats=args.repeats)
        row(f"FID generation, {fid_images} images, batch <= {args.fid_batch}",
            f"{fid['seconds']:.3f} s",
            f"path: {fid['path']}; goal < 0.5 s for 1000 on an H100")
    overhead = sampler_overhead_ms(COLAB, device)
    row("sampler overhead per step, ours", f"{overhead['ours']:.3f} ms", "U-Net replaced by 0 * x")
    row("sampler overhead per step, diffusers", f"{overhead['diffusers']:.3f} ms",
        f"ours is {overhead['diffusers'] / overhead['ours']:.2f}x as fast")
    relation = "<=" if check["same"] else ">"
    row("same images, same noise", "yes" if check["same"] else "NO",
        f"max diff {check['max_abs_diff']:.1e} {relation} tolerance {check['tolerance']:.1e}")
    return 0 if check["same"] else 1
