"""The fast paths of training and sampling (solutions/fast_path.py) and their fallback to eager.

On the CPU the fast path is torch.compile, here with the "eager" backend and a one-layer
stand-in for the U-Net: Dynamo traces the whole loss (the student's Diffusion.forward) as it
would on a GPU, in a second instead of minutes of tracing and C++ compilation. A forward it
cannot trace must fall back to eager with one line, losing no step. The CUDA-graph tests at
the end need a GPU (tests/conftest.py skips them without one).
"""

import math

import pytest
import torch

import fast_path
import main
from diffusion import Diffusion
from image_data import load_dataset
from trainer import Trainer, load_checkpoint
from unet import Unet

TINY = dict(image_size=8, unet_dim=8, unet_dim_mults=[1, 2], time_steps=10,
            schedule="cosine", loss="l1")


class SmallNet(torch.nn.Module):
    """A stand-in for the U-Net with its interface: eps(x_t, t), one conv and a time bias."""

    def __init__(self, channels=1, timesteps=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.time = torch.nn.Embedding(timesteps, channels)

    def forward(self, x, t):
        return self.conv(x) + self.time(t)[:, :, None, None]


class ItemForward(Diffusion):
    """A student's forward that calls .item(): it cannot be captured in a CUDA graph (a GPU to
    CPU copy). Dynamo traces .item() since torch 2.x, so the compile path keeps it."""

    def forward(self, x_0, noise=None):
        t = torch.randint(0, self.num_timesteps, (x_0.shape[0],), device=x_0.device)
        if noise is None:
            noise = self.noise_like(x_0.shape, x_0.device)
        loss = self.p_loss(x_0, t, noise)
        self.last_loss = loss.item()
        return loss


class TensorBranchForward(Diffusion):
    """A student's forward that branches on a tensor's value."""

    def forward(self, x_0, noise=None):
        if (x_0.abs() > 1).any():
            raise ValueError("images must be in [-1, 1]")
        return super().forward(x_0, noise)


class BranchingNet(SmallNet):
    def forward(self, x, t):
        if (t < 0).any():
            raise ValueError("negative time")
        return super().forward(x, t)


def build(diffusion_class=Diffusion, model_class=SmallNet, seed=0):
    torch.manual_seed(seed)
    model = (model_class(TINY["unet_dim"], tuple(TINY["unet_dim_mults"]), channels=1)
             if model_class is Unet else model_class())
    return diffusion_class(model, image_size=TINY["image_size"], channels=1,
                           timesteps=TINY["time_steps"])


def make_trainer(save_folder, diffusion=None, *, train_steps=4, fast="off", device="cpu",
                 save_every=1000, seed=0, **kwargs):
    dataset, channels = load_dataset("digits", TINY["image_size"])
    config = {**TINY, "dataset": "digits", "data_path": None, "data_class": None,
              "channels": channels}
    return Trainer(diffusion if diffusion is not None else build(seed=seed), dataset,
                   save_folder=save_folder, config=config, batch_size=16, train_steps=train_steps,
                   save_and_sample_every=save_every, num_samples=4, seed=seed, device=device,
                   fast=fast, compile_backend="eager", **kwargs)


def adam_steps(optimizer):
    return {int(s["step"]) for s in optimizer.state_dict()["state"].values()}


def test_auto_means_graphs_on_cuda_and_eager_on_the_cpu():
    assert fast_path.resolve_mode("auto", "cuda") == "graphs"
    assert fast_path.resolve_mode("auto", torch.device("cuda:1")) == "graphs"
    assert fast_path.resolve_mode("auto", "cpu") == "off"
    assert fast_path.resolve_mode("compile", "cpu") == "compile"
    with pytest.raises(ValueError, match="auto, graphs, compile, off"):
        fast_path.resolve_mode("fastest", "cpu")


@pytest.mark.slow  # about 10 s: the first test here to import torch._dynamo
def test_compiled_training_gives_the_eager_losses(tmp_path):
    # Dynamo's "eager" backend runs the traced ops in the traced order: the same losses, so
    # the compiled step is the same computation (inductor reorders and fuses; CUDA graphs draw
    # their random numbers differently: there the agreement is in distribution, tested on GPU).
    eager = make_trainer(tmp_path / "eager", fast="off").train()
    trainer = make_trainer(tmp_path / "compiled", fast="compile")
    compiled = trainer.train()
    assert trainer.train_step.name == "compile" and trainer.train_step.failure is None
    assert [s for s, _ in compiled] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor([v for _, v in compiled]),
                               torch.tensor([v for _, v in eager]), rtol=1e-5, atol=1e-6)


def test_untraceable_forward_falls_back_to_eager_with_one_line(tmp_path, capsys):
    trainer = make_trainer(tmp_path, build(TensorBranchForward), train_steps=5, fast="compile")
    losses = trainer.train()
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "fast path" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("training: fast path 'compile' failed (") and "eagerly" in lines[0]
    assert trainer.train_step.name == "off" and trainer.train_step.failure
    # No step lost or done twice: five logged losses, five Adam updates.
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(v) for _, v in losses)
    assert adam_steps(trainer.optimizer) == {5}


def test_fallback_redoes_the_failed_batch_exactly_once():
    diffusion = build(TensorBranchForward)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    messages = []
    step = fast_path.make_train_step(diffusion, optimizer, "compile", compile_backend="eager",
                                     log=messages.append)
    loss = step(torch.rand(4, 1, 8, 8) * 2 - 1)
    assert loss.dim() == 0 and not loss.requires_grad
    assert len(messages) == 1 and "'compile' failed" in messages[0], messages
    assert adam_steps(optimizer) == {1}


def test_an_error_eager_shares_still_surfaces(tmp_path):
    # A wrong image size is a real error, not a tracing problem: eager raises it too.
    diffusion = build()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    step = fast_path.make_train_step(diffusion, optimizer, "compile", compile_backend="eager",
                                     log=lambda message: None)
    with pytest.raises(ValueError, match="Check --image_size"):
        step(torch.zeros(2, 1, 16, 16))


def test_graphs_on_the_cpu_fall_back_at_once_and_say_why():
    diffusion = build()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    messages = []
    step = fast_path.make_train_step(diffusion, optimizer, "graphs", log=messages.append)
    assert messages == ["training: fast path 'graphs' failed (RuntimeError: CUDA graphs need a "
                        "CUDA device; the model is on cpu); running eagerly"]
    step(torch.rand(4, 1, 8, 8))
    assert step.name == "off" and adam_steps(optimizer) == {1}


def test_compiled_sampler_and_its_fallback():
    diffusion = build().eval()
    messages = []
    sampler = fast_path.make_sampler(diffusion, "compile", compile_backend="eager",
                                     log=messages.append)
    torch.manual_seed(1)
    fast = sampler(3)
    torch.manual_seed(1)
    torch.testing.assert_close(fast, diffusion.sample(3), rtol=1e-5, atol=1e-6)
    assert messages == [] and sampler.name == "compile"
    # The U-Net is compiled only during the call: state_dict keys stay plain.
    assert all(not k.startswith("model._orig_mod") for k in diffusion.state_dict())

    broken = build(model_class=BranchingNet).eval()
    sampler = fast_path.make_sampler(broken, "compile", compile_backend="eager",
                                     log=messages.append)
    images = sampler(3)
    assert images.shape == (3, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert len(messages) == 1 and messages[0].startswith("sampling: fast path 'compile' failed")
    assert sampler.name == "off"


def test_checkpoints_hold_the_eager_optimizer_state():
    # Adam(capturable=True), as CUDA graphs need it, keeps its step counters on the GPU and
    # says capturable=True; a checkpoint stores the eager form, which any device resumes.
    diffusion = build()
    eager = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    diffusion(torch.rand(4, 1, 8, 8)).backward()
    eager.step()
    reference = eager.state_dict()
    captured_like = {
        "state": {k: {**s, "step": s["step"].clone().requires_grad_(False)}
                  for k, s in reference["state"].items()},
        "param_groups": [{**g, "capturable": True} for g in reference["param_groups"]]}
    portable = fast_path.portable_optimizer_state(captured_like)
    assert all(g["capturable"] is False for g in portable["param_groups"])
    assert portable["param_groups"] == reference["param_groups"]
    for key, state in portable["state"].items():
        assert state["step"].device.type == "cpu" and state["step"].dtype == torch.float32
        assert set(state) == set(reference["state"][key])

    # Loaded into an optimizer, it takes that optimizer's own capturable setting.
    other = torch.optim.Adam(diffusion.parameters(), lr=1e-3)
    fast_path.load_optimizer_state(other, captured_like)
    assert other.param_groups[0]["capturable"] is False
    diffusion(torch.rand(4, 1, 8, 8)).backward()
    other.step()  # a capturable=True state would refuse to step on the CPU
    assert adam_steps(other) == {2}


def test_a_checkpoint_from_the_fast_path_resumes_eagerly(tmp_path):
    make_trainer(tmp_path, train_steps=4, save_every=4, fast="compile").train()
    ckpt = load_checkpoint(tmp_path / "model-4.pt")
    assert all(g["capturable"] is False for g in ckpt["optimizer"]["param_groups"])

    resumed = make_trainer(tmp_path, train_steps=6, save_every=4, fast="off")
    resumed.load(tmp_path / "model-4.pt")
    resumed.train()
    assert resumed.step == 6 and adam_steps(resumed.optimizer) == {6}
    assert [s for s, _ in resumed.losses] == list(range(1, 7))


def test_main_accepts_the_fast_flags_and_rejects_graphs_on_the_cpu(capsys):
    args = main.parse_args(["--device", "cpu", "--fast", "compile", "--mixed-precision"])
    assert args.fast == "compile" and args.mixed_precision
    assert "applies to CUDA only" in capsys.readouterr().err
    assert main.parse_args(["--device", "cpu"]).fast == "auto"
    with pytest.raises(SystemExit) as exit_info:
        main.parse_args(["--device", "cpu", "--fast", "graphs"])
    assert exit_info.value.code == 2
    assert "--fast graphs needs CUDA" in capsys.readouterr().err


# ---------------------------------------------------------------- CUDA graphs (GPU only)

def loss_mean_and_error(losses):
    values = torch.tensor([v for _, v in losses])
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


@pytest.mark.gpu
def test_graphed_training_matches_eager_in_distribution(tmp_path):
    steps = 60
    eager, graphed = (make_trainer(tmp_path / fast, build(model_class=Unet), train_steps=steps,
                                   fast=fast, device="cuda", learning_rate=2e-3)
                      for fast in ("off", "graphs"))
    eager_losses, graphed_losses = eager.train(), graphed.train()
    assert graphed.train_step.name == "graphs", graphed.train_step.failure
    assert graphed.train_step.fast.graph is not None
    assert [s for s, _ in graphed_losses] == list(range(1, steps + 1))
    assert adam_steps(graphed.optimizer) == {steps}
    # Same initial weights, same data order, different random draws: the two runs' losses
    # over the last 30 steps agree within 4 standard errors of the difference of the means.
    (m_e, se_e), (m_g, se_g) = (loss_mean_and_error(x[-30:]) for x in (eager_losses,
                                                                         graphed_losses))
    assert abs(m_e - m_g) < 4 * math.hypot(se_e, se_g), (m_e, m_g, se_e, se_g)
    # The gradients are overwritten, not accumulated, at each replay: the loss went down.
    first, _ = loss_mean_and_error(graphed_losses[:10])
    assert m_g < first


@pytest.mark.gpu
def test_graphed_training_with_bf16_autocast(tmp_path):
    trainer = make_trainer(tmp_path, build(model_class=Unet), train_steps=8, fast="graphs",
                           device="cuda", mixed_precision=True)
    losses = trainer.train()
    assert trainer.train_step.name == "graphs", trainer.train_step.failure
    assert all(math.isfinite(v) for _, v in losses)


@pytest.mark.gpu
def test_graph_capture_of_an_item_forward_falls_back_with_one_line(tmp_path, capsys):
    trainer = make_trainer(tmp_path, build(ItemForward, Unet), train_steps=6, fast="graphs",
                           device="cuda")
    losses = trainer.train()
    lines = [line for line in capsys.readouterr().out.splitlines() if "fast path" in line]
    assert len(lines) == 1 and "'graphs' failed" in lines[0], lines
    assert trainer.train_step.name == "off"
    assert [s for s, _ in losses] == list(range(1, 7)) and adam_steps(trainer.optimizer) == {6}


@pytest.mark.gpu
def test_a_checkpoint_from_cuda_graphs_resumes_on_the_cpu(tmp_path):
    make_trainer(tmp_path, build(model_class=Unet), train_steps=5, save_every=5, fast="graphs",
                 device="cuda").train()
    resumed = make_trainer(tmp_path, build(model_class=Unet), train_steps=7, save_every=5,
                           fast="off", device="cpu")
    resumed.load(tmp_path / "model-5.pt")
    assert resumed.optimizer.param_groups[0]["capturable"] is False
    resumed.train()
    assert adam_steps(resumed.optimizer) == {7}


@pytest.mark.gpu
def test_graphed_sampler_follows_the_seed_and_the_eager_distribution():
    diffusion = build(model_class=Unet).cuda().eval()
    sampler = fast_path.make_sampler(diffusion, "graphs", log=pytest.fail)
    first = sampler(64)  # warm-up, eager
    torch.manual_seed(3)
    a = sampler(64)      # capture and replay
    torch.manual_seed(3)
    b = sampler(64)      # replay
    assert sampler.fast.graphs and sampler.name == "graphs"
    torch.testing.assert_close(a, b)
    torch.manual_seed(4)
    assert (sampler(64) - a).abs().max() > 0.01  # fresh noise at each replay
    # The graphed samples and eager samples have the same per-pixel mean within noise.
    eager = torch.cat([diffusion.sample(64) for _ in range(4)])
    graphed = torch.cat([sampler(64) for _ in range(4)])
    for x in (first, eager, graphed):
        assert x.shape == (x.shape[0], 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    se = math.hypot(eager.mean((1, 2, 3)).std().item(), graphed.mean((1, 2, 3)).std().item())
    assert abs(eager.mean() - graphed.mean()) < 4 * se / math.sqrt(256)
