"""Probes of part 1 (diffusion.py): they run INSIDE the sandbox, next to student code.

The runtime (autograder/runtime/worker.py) imports the submission and calls
PROBES[kind](module, cfg, tensors, noise) in a fresh, limited child; a probe builds the student's
object, calls one function and returns only tensors. Verdicts are computed in tests.py, in the
grader, which imports this file too for the pieces both sides must agree on (ProbeModel, the
contract's buffer names, the stand-ins that isolate one function from another).

Standalone (stdlib and torch): the grader's tree is hidden from the sandbox.
"""

import math

CONTRACT_BUFFERS = (
    "alphas", "alphas_cumprod", "alphas_cumprod_prev",
    "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2",
)


def probe_model_class():
    import torch
    from torch import nn

    class ProbeModel(nn.Module):
        """A deterministic stand-in for eps_theta(x_t, t), cheap and defined on every device.

        eps = scale * tanh(0.8 x + sin(3 (t + 1) / T + 0.5 c)): depends on x, t and the channel c,
        is 0.8-Lipschitz in x, and records the calls it gets (except on the meta device).
        """

        lipschitz = 0.8

        def __init__(self, timesteps):
            super().__init__()
            self.timesteps = int(timesteps)
            self.scale = nn.Parameter(torch.tensor(1.0))
            self.calls = []

        def forward(self, x, t):
            if x.device.type != "meta":
                self.calls.append((x.detach().clone(), t.detach().clone()))
            phase = (t.to(torch.float64 if x.dtype == torch.float64 else torch.float32) + 1.0)
            phase = phase.reshape(-1, *([1] * (x.dim() - 1))) * (3.0 / self.timesteps)
            chan = torch.arange(x.shape[1], device=x.device, dtype=phase.dtype)
            chan = chan.reshape(1, -1, *([1] * (x.dim() - 2))) * 0.5
            return self.scale.to(x.dtype) * torch.tanh(0.8 * x + torch.sin(phase + chan).to(x.dtype))

    return ProbeModel


def stub_p_sample_value(x, t_index):
    """What the stand-in p_sample returns (isolates p_sample_loop from the student's p_sample)."""
    return 0.9 * x + 0.05 * math.sin(t_index + 1.0)


STUB_P_LOSS_VALUE = 7.25  # what the stand-in p_loss returns (isolates forward from p_loss)


def _build(module, cfg, tensors, inject):
    """The student's Diffusion with a ProbeModel; with `inject`, the reference buffers (sent by
    the grader) replace the contract buffers, and a failing __init__ is bypassed."""
    import torch
    from torch import nn

    ProbeModel = probe_model_class()
    model = ProbeModel(cfg["T"])
    kwargs = dict(image_size=cfg.get("image_size", 4), channels=cfg.get("channels", 1),
                  timesteps=cfg["T"], schedule=cfg.get("schedule", "cosine"),
                  loss_type=cfg.get("loss_type", "l1"))
    cls = module.Diffusion
    try:
        obj = cls(model, **kwargs)
    except Exception:
        if not inject:
            raise
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj.model = model
        obj.image_size, obj.channels = kwargs["image_size"], kwargs["channels"]
        obj.num_timesteps, obj.loss_type = kwargs["timesteps"], kwargs["loss_type"]
    if inject:
        for name in CONTRACT_BUFFERS:
            value = tensors[f"buf_{name}"].to(torch.float32)
            if name in obj._buffers:
                obj._buffers[name] = value
            else:
                if hasattr(obj, name):
                    delattr(obj, name)
                obj.register_buffer(name, value)
    return obj, model


def _calls(model):
    import torch

    xs = [x for x, _ in model.calls]
    ts = [t.reshape(-1).to(torch.int64) for _, t in model.calls]
    return xs, ts


def probe_buffers(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors, inject=False)
    registered = dict(obj.named_buffers())
    out, missing, not_buffers = {}, [], []
    for name in CONTRACT_BUFFERS:
        value = getattr(obj, name, None)
        if value is None or not hasattr(value, "detach"):
            missing.append(name)
            continue
        if name not in registered:
            not_buffers.append(name)
        out[name] = value.detach().double()
    return {"missing": missing, "not_buffers": not_buffers}, out


def probe_q_sample(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors, inject=True)
    return {}, {"out": obj.q_sample(tensors["x_0"], tensors["t"], tensors["noise"])}


def probe_q_posterior(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors, inject=False)
    mean, var = obj.q_posterior(tensors["x_0"], tensors["x_t"], tensors["t"])
    return {}, {"mean": mean, "variance": var}


def probe_p_loss(module, cfg, tensors, noise):
    import torch

    obj, model = _build(module, cfg, tensors, inject=True)
    loss = obj.p_loss(tensors["x_0"], tensors["t"], tensors["noise"])
    out = {"loss": torch.as_tensor(loss).detach()}
    xs, ts = _calls(model)
    if xs:
        out["model_x"], out["model_t"] = xs[0], ts[0]
    return {"model_calls": len(xs)}, out


def probe_forward_isolated(module, cfg, tensors, noise):
    import torch

    obj, _ = _build(module, cfg, tensors, inject=True)
    seen = []

    def p_loss(x_0, t, noise_):
        seen.append((x_0, t, noise_))
        return x_0.sum() * 0 + STUB_P_LOSS_VALUE

    obj.p_loss = p_loss
    given = tensors.get("noise")
    ret = obj.forward(tensors["x_0"], given) if given is not None else obj.forward(tensors["x_0"])
    out = {"ret": torch.as_tensor(ret).detach()}
    if seen:
        x_0, t, n = seen[0]
        out.update(p_loss_x_0=x_0.detach(), p_loss_t=t.detach(),
                   p_loss_noise=n.detach() if isinstance(n, torch.Tensor) else torch.zeros(0))
    return {"p_loss_calls": len(seen),
            "t_dtype": str(seen[0][1].dtype) if seen else ""}, out


def probe_forward(module, cfg, tensors, noise):
    import torch

    obj, model = _build(module, cfg, tensors, inject=True)
    loss = obj.forward(tensors["x_0"], tensors["noise"])
    xs, ts = _calls(model)
    out = {"loss": torch.as_tensor(loss).detach()}
    if ts:
        out["model_t"] = ts[0]
    return {"model_calls": len(xs)}, out


def probe_p_sample(module, cfg, tensors, noise):
    import torch

    obj, model = _build(module, cfg, tensors, inject=True)
    t_index = int(cfg["t_index"])
    x = tensors["x"]
    t = torch.full((x.shape[0],), t_index, dtype=torch.long)
    out = obj.p_sample(x, t, t_index)
    return {"model_calls": len(model.calls)}, {"out": out}


def probe_p_sample_loop_isolated(module, cfg, tensors, noise):
    import torch

    obj, _ = _build(module, cfg, tensors, inject=True)
    calls = []

    def p_sample(x, t, t_index):
        calls.append((int(t_index), t.detach().reshape(-1).to(torch.int64).clone(),
                      tuple(x.shape)))
        return stub_p_sample_value(x, int(t_index))

    obj.p_sample = p_sample
    final = obj.p_sample_loop(tensors["img"].clone())
    n_final = len(calls)
    everything = obj.p_sample_loop(tensors["img"].clone(), return_all_timesteps=True)
    t_indices = torch.tensor([c[0] for c in calls[:n_final]], dtype=torch.int64)
    t_ok = all(bool((c[1] == c[0]).all()) and c[1].numel() == c[2][0] for c in calls)
    return ({"calls": n_final, "t_filled": t_ok},
            {"final": final, "all": everything, "t_indices": t_indices})


def probe_p_sample_loop(module, cfg, tensors, noise):
    obj, model = _build(module, cfg, tensors, inject=True)
    return {}, {"final": obj.p_sample_loop(tensors["img"].clone())}


def probe_sample_isolated(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors, inject=True)
    seen = []

    def p_sample_loop(img, return_all_timesteps=False):
        seen.append(img)
        return img * 0.5

    obj.p_sample_loop = p_sample_loop
    ret = obj.sample(int(cfg["batch_size"]))
    out = {"ret": ret}
    if seen:
        out["img"] = seen[0]
    return {"loop_calls": len(seen)}, out


def probe_meta(module, cfg, tensors, noise):
    """Everything on the meta device: mixing in a tensor made on the CPU raises."""
    import torch

    obj, _ = _build(module, cfg, tensors, inject=True)
    obj = obj.to("meta")
    b, c, s = 2, cfg.get("channels", 1), cfg.get("image_size", 4)
    x = torch.zeros(b, c, s, s, device="meta")
    method = cfg["method"]
    if method == "forward":
        ret = obj.forward(x)
    elif method == "p_sample":
        ti = int(cfg["t_index"])
        ret = obj.p_sample(x, torch.full((b,), ti, dtype=torch.long, device="meta"), ti)
    elif method == "p_sample_loop":  # p_sample replaced: only the loop's own tensors count
        obj.p_sample = lambda x_, t_, i_: stub_p_sample_value(x_ + 0 * t_.reshape(-1, 1, 1, 1), i_)
        ret = obj.p_sample_loop(x)
    elif method == "sample":  # p_sample_loop replaced: only x_T's device counts
        obj.p_sample_loop = lambda img, return_all_timesteps=False: img
        ret = obj.sample(b)
    else:
        raise ValueError(method)
    device = ret.device.type if isinstance(ret, torch.Tensor) else type(ret).__name__
    return {"device": device, "shape": list(getattr(ret, "shape", []))}, {}


def probe_training(module, cfg, tensors, noise):
    """A few dozen Adam steps of a small U-Net through the student's forward, then sample()."""
    import time

    import torch

    noise.__exit__(None, None, None)  # real randomness (seeded) for training
    import unet

    device = "cuda" if cfg.get("cuda") and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = unet.Unet(dim=8, dim_mults=(1, 2), channels=1).to(device)
    diffusion = module.Diffusion(model, image_size=8, channels=1, timesteps=cfg["T"],
                                 schedule="cosine", loss_type="l1").to(device)
    data = tensors["data"].to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.get("lr", 2e-3))
    losses = []
    start = time.perf_counter()
    g = torch.Generator().manual_seed(1)
    for _ in range(cfg["steps"]):
        idx = torch.randint(0, data.shape[0], (cfg["batch"],), generator=g).to(device)
        loss = diffusion(data[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - start
    model.eval()
    samples = diffusion.sample(4)
    return ({"device": device, "train_s": train_s,
             "sample_device": samples.device.type},
            {"losses": torch.tensor(losses, dtype=torch.float64), "samples": samples})


PROBES = {
    "buffers": probe_buffers,
    "q_sample": probe_q_sample,
    "q_posterior": probe_q_posterior,
    "p_loss": probe_p_loss,
    "forward_isolated": probe_forward_isolated,
    "forward": probe_forward,
    "p_sample": probe_p_sample,
    "p_sample_loop_isolated": probe_p_sample_loop_isolated,
    "p_sample_loop": probe_p_sample_loop,
    "sample_isolated": probe_sample_isolated,
    "meta": probe_meta,
    "training": probe_training,
}
