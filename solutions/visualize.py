"""Figures of the forward (noising) and backward (sampling) processes of a trained model.

Columns sit at the paper steps nearest to 0, 1/4, 1/2, 3/4 and all of the chain x_0 ... x_T:
fraction f is step s = floor(f * T + 1/2) (round half up), shown as x_s: s = 0 is the clean batch,
s >= 1 is q_sample at code index i = s - 1. Each column is labelled with its step and that step's
own fraction of T: with the default T = 50, x_0 (0%), x_13 (26%), x_25 (50%), x_38 (76%) and
x_50 (100%).
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from diffusion import unnormalize  # noqa: E402

FRACTIONS = (0.0, 0.25, 0.50, 0.75, 1.0)


def paper_steps(num_timesteps, fractions=FRACTIONS):
    """Paper steps s in 0..T for the given fractions of T (round half up)."""
    return [min(num_timesteps, math.floor(f * num_timesteps + 0.5)) for f in fractions]


def step_label(step, num_timesteps):
    """'x_13 (26% of T)': the step shown and its true fraction of T."""
    return f"x_{step} ({100 * step / num_timesteps:.0f}% of T)"


@torch.no_grad()
def forward_process(diffusion, x_0, steps, noise=None):
    """x_s ~ q(x_s | x_0) for each paper step s in `steps`, one shared noise draw.

    Args:
        x_0: (B, C, H, W) clean images in [-1, 1].
        steps: paper steps in 0..T (0 returns x_0 itself).
    Returns:
        list of (B, C, H, W) tensors in [-1, 1] scale (not clamped), one per step.
    """
    if noise is None:
        noise = diffusion.noise_like(x_0.shape, x_0.device)
    states = []
    for s in steps:
        if s == 0:
            states.append(x_0)
        else:
            t = torch.full((x_0.shape[0],), s - 1, dtype=torch.long, device=x_0.device)
            states.append(diffusion.q_sample(x_0, t, noise))
    return states


@torch.no_grad()
def backward_process(diffusion, x_start, steps):
    """Sample from x_start (taken as x_T) and keep the states at the given paper steps.

    Args:
        x_start: (B, C, H, W) noisy images in [-1, 1] (not rescaled).
        steps: paper steps in 0..T, increasing.
    Returns:
        list of (B, C, H, W) tensors in [0, 1], in chronological (sampling) order, i.e. from the
        largest step to the smallest.
    """
    T = diffusion.num_timesteps
    # all_states[k] is the state after k reverse steps, i.e. paper step T - k.
    all_states = diffusion.p_sample_loop(x_start, return_all_timesteps=True)
    return [all_states[T - s] for s in reversed(steps)]


def save_process_figure(states, labels, path, title):
    """One column per state (the batch as a grid), titled with its label."""
    fig, axes = plt.subplots(1, len(states), figsize=(2.2 * len(states), 2.9))
    for ax, state, label in zip(axes, states, labels, strict=True):
        grid = make_grid(state.float().cpu(), nrow=max(1, int(math.ceil(len(state) / 4))),
                         padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def visualize(diffusion, x_0, save_folder, fractions=FRACTIONS):
    """Save forward_process.png and backward_process.png in `save_folder`.

    Args:
        diffusion: a trained Diffusion (in eval mode).
        x_0: (B, C, H, W) training images in [-1, 1]; a handful (e.g. 8-16) reads best.
    Returns:
        (forward_path, backward_path).
    """
    save_folder = Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    T = diffusion.num_timesteps
    steps = paper_steps(T, fractions)
    labels = [step_label(s, T) for s in steps]

    forward_states = forward_process(diffusion, x_0, steps)
    forward_path = save_folder / "forward_process.png"
    save_process_figure([unnormalize(x) for x in forward_states], labels, forward_path,
                        f"Forward process q(x_s | x_0), T = {T}")

    # Start the sampler from the noisiest forward state, as it is (in [-1, 1]).
    backward_states = backward_process(diffusion, forward_states[-1], steps)
    backward_path = save_folder / "backward_process.png"
    save_process_figure(backward_states, labels[::-1], backward_path,
                        f"Backward process p(x_(s-1) | x_s) from x_{max(steps)}, T = {T}")
    return forward_path, backward_path
