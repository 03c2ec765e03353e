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


def probe_eps(x, t, timesteps, scale=1.0):
    """eps = scale * tanh(0.8 x + sin(3 (t + 1) / T + 0.5 c)), in x's dtype (c = the channel).

    The ProbeModel's formula, a plain function so that the grader can evaluate it in float64 (and
    differentiate it) on exactly what the sandbox runs in float32."""
    import torch

    # Indexed from the end (images are (B, C, H, W)) so that a leading axis broadcasts.
    phase = (t.to(torch.float64 if x.dtype == torch.float64 else torch.float32) + 1.0)
    phase = phase.reshape(-1, 1, 1, 1) * (3.0 / timesteps)
    chan = torch.arange(x.shape[-3], device=x.device, dtype=phase.dtype).reshape(-1, 1, 1) * 0.5
    return scale * torch.tanh(0.8 * x + torch.sin(phase + chan).to(x.dtype))


def probe_eps_rounding(x, t, timesteps):
    """Bound on |ProbeModel(x, t) in float32 - probe_eps(x, t) exact| for a given x (float64).

    The tanh argument 0.8 x + sin(phase + chan) carries at most 4 roundings of terms no larger than
    0.8|x|, |phase| + |chan| and 1; tanh moves that error by sech^2 (<= 1) and rounds once more."""
    import torch

    x = x.double()
    phase = ((t.double() + 1.0) * (3.0 / timesteps)).reshape(-1, 1, 1, 1)
    chan = (torch.arange(x.shape[-3], dtype=torch.float64) * 0.5).reshape(-1, 1, 1)
    arg = 0.8 * x + torch.sin(phase + chan)
    u = 2.0 ** -24
    return 4 * u * (0.8 * x.abs() + phase.abs() + chan.abs() + 1) / torch.cosh(arg) ** 2 \
        + 2 * u * torch.tanh(arg).abs()


def probe_model_class():
    import torch
    from torch import nn

    class ProbeModel(nn.Module):
        """A deterministic stand-in for eps_theta(x_t, t), cheap and defined on every device.

        probe_eps(x, t, T): depends on x, t and the channel c, is 0.8-Lipschitz in x, and records
        the calls it gets (except on the meta device).
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
            return probe_eps(x, t, self.timesteps, self.scale.to(x.dtype))

    return ProbeModel


def stub_p_sample_value(x, t_index):
    """What the stand-in p_sample returns (isolates p_sample_loop from the student's p_sample)."""
    return 0.9 * x + 0.05 * math.sin(t_index + 1.0)


STUB_P_LOSS_VALUE = 7.25  # what the stand-in p_loss returns (isolates forward from p_loss)


def _extract(a, t, x_shape):
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def ref_q_sample(obj):
    """The reference q_sample on obj's (injected) buffers: stands in for the student's, so that
    p_loss is graded on its own."""
    def q_sample(x_0, t, noise):
        b = obj._buffers
        return (_extract(b["sqrt_alphas_cumprod"], t, x_0.shape) * x_0
                + _extract(b["sqrt_one_minus_alphas_cumprod"], t, x_0.shape) * noise)
    return q_sample


def ref_q_posterior(obj):
    """The given q_posterior on obj's (injected) buffers (p_sample is graded on its own)."""
    def q_posterior(x_0, x_t, t):
        b = obj._buffers
        mean = (_extract(b["posterior_mean_coef1"], t, x_t.shape) * x_0
                + _extract(b["posterior_mean_coef2"], t, x_t.shape) * x_t)
        return mean, _extract(b["posterior_variance"], t, x_t.shape)
    return q_posterior


def ref_p_loss(obj, loss_type):
    """The reference p_loss (with the reference q_sample): forward is graded on its own."""
    import torch.nn.functional as F

    def p_loss(x_0, t, noise):
        eps = obj.model(ref_q_sample(obj)(x_0, t, noise), t)
        return (F.l1_loss if loss_type == "l1" else F.mse_loss)(eps, noise)
    return p_loss


def describe(value):
    """What a function returned, in words, when it is not a tensor (see autograder.checks)."""
    if value is None:
        return "None (a missing `return`?)"
    if value is Ellipsis:
        return "Ellipsis (the `...` placeholder)"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__name__}"


def pack(header, out):
    """Outputs as tensors; anything else is named in header["returned"] instead of sent."""
    import numbers

    import torch

    arrays = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            arrays[k] = v.detach()
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            arrays[k] = torch.tensor(float(v), dtype=torch.float64)
        else:
            header.setdefault("returned", {})[k] = describe(v)
    return header, arrays


INIT_ERRORS = []  # the student's __init__ error that _build bypassed, if any


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
    INIT_ERRORS.clear()
    try:
        obj = cls(model, **kwargs)
    except Exception as exc:
        if not inject:
            raise
        INIT_ERRORS.append(exc)
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
    return pack({}, {"out": obj.q_sample(tensors["x_0"], tensors["t"], tensors["noise"])})


def probe_q_posterior(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors, inject=True)
    if INIT_ERRORS and isinstance(INIT_ERRORS[0], NotImplementedError):
        raise INIT_ERRORS[0]  # the starter kit: q_posterior is given, but nothing else is there
    ret = obj.q_posterior(tensors["x_0"], tensors["x_t"], tensors["t"])
    if not isinstance(ret, (tuple, list)) or len(ret) != 2:
        return pack({}, {"mean": ret})
    return pack({}, {"mean": ret[0], "variance": ret[1]})


def probe_p_loss(module, cfg, tensors, noise):
    obj, model = _build(module, cfg, tensors, inject=True)
    obj.q_sample = ref_q_sample(obj)
    header, out = pack({}, {"loss": obj.p_loss(tensors["x_0"], tensors["t"], tensors["noise"])})
    xs, ts = _calls(model)
    if xs:
        out["model_x"], out["model_t"] = xs[0], ts[0]
    header["model_calls"] = len(xs)
    return header, out


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
    out = {"ret": ret}
    if seen:
        x_0, t, n = seen[0]
        out.update(p_loss_x_0=x_0, p_loss_t=t,
                   p_loss_noise=n if isinstance(n, torch.Tensor) else torch.zeros(0))
    header, out = pack({}, out)
    header.update(p_loss_calls=len(seen), t_dtype=str(seen[0][1].dtype) if seen else "")
    return header, out


def probe_forward(module, cfg, tensors, noise):
    """forward with the reference p_loss: what it returns, and whether it is differentiable."""
    import torch

    obj, model = _build(module, cfg, tensors, inject=True)
    obj.p_loss = ref_p_loss(obj, cfg.get("loss_type", "l1"))
    loss = obj.forward(tensors["x_0"], tensors["noise"])
    xs, ts = _calls(model)
    header, out = pack({"model_calls": len(xs)}, {"loss": loss})
    header["requires_grad"] = bool(isinstance(loss, torch.Tensor) and loss.requires_grad)
    if ts:
        out["model_t"] = ts[0]
    return header, out


def probe_p_sample(module, cfg, tensors, noise):
    import torch

    obj, model = _build(module, cfg, tensors, inject=True)
    obj.q_posterior = ref_q_posterior(obj)
    t_index = int(cfg["t_index"])
    x = tensors["x"]
    t = torch.full((x.shape[0],), t_index, dtype=torch.long)
    out = obj.p_sample(x, t, t_index)
    return pack({"model_calls": len(model.calls)}, {"out": out})


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
    return pack({"calls": n_final, "t_filled": t_ok},
                {"final": final, "all": everything, "t_indices": t_indices})


def probe_p_sample_loop(module, cfg, tensors, noise):
    obj, model = _build(module, cfg, tensors, inject=True)
    obj.q_posterior = ref_q_posterior(obj)
    return pack({}, {"final": obj.p_sample_loop(tensors["img"].clone())})


def probe_sample_isolated(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors, inject=True)
    seen = []

    def p_sample_loop(img, return_all_timesteps=False):
        seen.append(img)
        return img * 0.5

    obj.p_sample_loop = p_sample_loop
    out = {"ret": obj.sample(int(cfg["batch_size"]))}
    if seen:
        out["img"] = seen[0]
    return pack({"loop_calls": len(seen)}, out)


def host_tensor_class():
    """A CPU tensor that raises when an operation mixes it with a tensor on another device.

    Plain (unregistered) tensor attributes do not follow .to(device). On a GPU, gathering one with
    a CUDA index raises; on the meta device it silently works. The device probe wraps each such
    attribute in this class so that a CPU-only grader sees the mistake a GPU would."""
    import torch

    moves = {"to", "cuda", "cpu", "type", "__repr__", "__format__", "size", "dim", "numel",
             "__len__", "device", "dtype", "shape", "is_floating_point", "__get__", "item",
             "tolist", "detach", "clone", "contiguous", "double", "float"}

    def flat(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                yield from flat(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                yield from flat(o)

    class HostTensor(torch.Tensor):
        attr = "a tensor attribute"

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            with torch._C.DisableTorchFunctionSubclass():  # inspecting must not recurse here
                tensors = list(flat((args, kwargs)))
                hosts = [a for a in tensors if isinstance(a, HostTensor) and a.dim() > 0]
                others = {a.device.type for a in tensors if not isinstance(a, HostTensor)}
                if name not in moves and hosts and others - {"cpu"}:
                    raise RuntimeError(
                        f"Expected all tensors to be on the same device: self.{hosts[0].attr} is "
                        f"a plain tensor attribute on cpu, used with tensors on "
                        f"{sorted(others - {'cpu'})[0]} (.to(device) does not move plain "
                        "attributes)")
                ret = func(*args, **kwargs)
                if not hosts:
                    return ret

                def wrap(r):  # still on the CPU (e.g. .to(dtype), sqrt): still a plain attribute
                    if isinstance(r, torch.Tensor) and r.device.type == "cpu":
                        r = r.as_subclass(HostTensor)
                        r.attr = hosts[0].attr
                    return r
                return tuple(wrap(r) for r in ret) if isinstance(ret, tuple) else wrap(ret)

    return HostTensor


def _mark_plain_attributes(obj):
    """Wrap obj's plain tensor attributes left on the CPU (see host_tensor_class)."""
    import torch

    HostTensor = host_tensor_class()
    names = []
    for name, value in list(vars(obj).items()):
        if (isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter)
                and value.device.type == "cpu"):
            wrapped = value.detach().as_subclass(HostTensor)
            wrapped.attr = name
            obj.__dict__[name] = wrapped
            names.append(name)
    return names


def probe_meta(module, cfg, tensors, noise):
    """Everything on another device: CUDA when the grader has one (cfg cuda), else the meta
    device. Mixing in a tensor made on the CPU, or a plain CPU tensor attribute, raises."""
    import torch

    device = "cuda" if cfg.get("cuda") and torch.cuda.is_available() else "meta"
    obj, _ = _build(module, cfg, tensors, inject=True)
    obj = obj.to(device)
    plain = _mark_plain_attributes(obj)
    b, c, s = 2, cfg.get("channels", 1), cfg.get("image_size", 4)
    x = torch.zeros(b, c, s, s, device=device)
    method = cfg["method"]
    if method == "forward":
        obj.p_loss = ref_p_loss(obj, cfg.get("loss_type", "l1"))
        ret = obj.forward(x)
    elif method == "p_sample":
        obj.q_posterior = ref_q_posterior(obj)
        ti = int(cfg["t_index"])
        ret = obj.p_sample(x, torch.full((b,), ti, dtype=torch.long, device=device), ti)
    elif method == "p_sample_loop":  # p_sample replaced: only the loop's own tensors count
        obj.p_sample = lambda x_, t_, i_: stub_p_sample_value(x_ + 0 * t_.reshape(-1, 1, 1, 1), i_)
        ret = obj.p_sample_loop(x)
    elif method == "sample":  # p_sample_loop replaced: only x_T's device counts
        obj.p_sample_loop = lambda img, return_all_timesteps=False: img
        ret = obj.sample(b)
    else:
        raise ValueError(method)
    got = ret.device.type if isinstance(ret, torch.Tensor) else describe(ret)
    return {"device": got, "expected_device": device, "plain_attributes": plain,
            "shape": list(getattr(ret, "shape", []))}, {}


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
