"""Probes of part 2 (binary_diffusion.py): they run INSIDE the sandbox, next to student code.

The runtime imports the submission and calls PROBES[kind](module, cfg, tensors, noise) in a
fresh, limited child; a probe builds the student's object, calls one function and returns only
tensors. Verdicts are computed in tests.py, in the grader, which imports this file too for the
pieces both sides must agree on: the ProbeLogits model, the uniform stream, and the stand-ins that
isolate one function from another (none of them is a formula of the homework).

Standalone (stdlib and torch): the grader's tree is hidden from the sandbox.
"""

def probe_uniform(seed, k, shape, _rand=None):
    """The k-th uniform [0, 1) draw a probe hands out: float32, CPU, from (seed, k) only.

    Both sides call it: the probe to answer the student's draws, the grader to know the answers.
    """
    import torch

    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * int(k) + 1)
    return (_rand or torch.rand)(tuple(int(s) for s in shape), generator=g, dtype=torch.float32)


class UniformPatch:
    """Answer every uniform draw (BinaryDiffusion.uniform_like, torch.rand, torch.rand_like,
    torch.bernoulli taken as u < p, Tensor.uniform_) with probe_uniform(seed, k, shape), k = 0, 1,
    ... in call order, so that any of these ways of drawing gets the same numbers."""

    def __init__(self, seed, module=None):
        import torch

        self.torch, self.seed, self.module, self.count, self.saved = torch, seed, module, 0, {}

    def draw(self, shape, dtype=None, device=None):
        u = probe_uniform(self.seed, self.count, shape, _rand=self.saved.get("rand"))
        self.count += 1
        u = u.to(dtype or self.torch.get_default_dtype())
        return u.to(device) if device is not None else u

    def __enter__(self):
        torch, patch = self.torch, self

        def shape_of(args, kwargs):
            if "size" in kwargs:
                args = (kwargs["size"],)
            if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
                return tuple(args[0])
            return tuple(int(a) for a in args)

        def rand(*args, dtype=None, device=None, generator=None, **kwargs):
            return patch.draw(shape_of(args, kwargs), dtype, device)

        def rand_like(x, *, dtype=None, device=None, **kwargs):
            return patch.draw(x.shape, dtype or x.dtype, device or x.device)

        def bernoulli(p, *args, generator=None, **kwargs):
            p = torch.as_tensor(p)
            return (patch.draw(p.shape, p.dtype, p.device) < p).to(p.dtype)

        def uniform_(self_tensor, a=0.0, b=1.0, *, generator=None):
            with torch.no_grad():
                self_tensor.copy_(patch.draw(self_tensor.shape, self_tensor.dtype,
                                             self_tensor.device) * (b - a) + a)
            return self_tensor

        self.saved = {"rand": torch.rand, "rand_like": torch.rand_like,
                      "bernoulli": torch.bernoulli, "uniform_": torch.Tensor.uniform_}
        torch.rand, torch.rand_like, torch.bernoulli = rand, rand_like, bernoulli
        torch.Tensor.uniform_ = uniform_
        fakes = {"rand": rand, "rand_like": rand_like, "bernoulli": bernoulli}
        if self.module is not None:  # `from torch import rand` in the submission
            for name, fake in fakes.items():
                if hasattr(self.module, name):
                    self.saved["module." + name] = getattr(self.module, name)
                    setattr(self.module, name, fake)
        return self

    def __exit__(self, *exc):
        torch = self.torch
        torch.rand, torch.rand_like = self.saved["rand"], self.saved["rand_like"]
        torch.bernoulli, torch.Tensor.uniform_ = self.saved["bernoulli"], self.saved["uniform_"]
        for key, value in self.saved.items():
            if key.startswith("module."):
                setattr(self.module, key[7:], value)
        return False


def probe_logits_class():
    import torch
    from torch import nn

    class ProbeLogits(nn.Module):
        """A deterministic stand-in for the network: logits = scale * (y + sin(0.7 t + 0.9 c)).

        Depends on y, the step t and the channel c; records its calls. `scale` is a parameter so
        that the loss has a gradient.
        """

        def __init__(self, scale=1.5):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(float(scale)))
            self.calls = []

        def forward(self, y, t):
            self.calls.append((y.detach().clone(), t.detach().clone()))
            phase = 0.7 * t.to(torch.float64).reshape(-1, 1, 1, 1)
            chan = 0.9 * torch.arange(y.shape[1], dtype=torch.float64).reshape(1, -1, 1, 1)
            shift = torch.sin(phase + chan).to(y.dtype if y.is_floating_point() else torch.float32)
            return self.scale * (y + shift)

    return ProbeLogits


def stub_posterior(y_t, y_0, t):
    """Stand-in for q_posterior (isolates reverse_probs and p_loss): in [0, 1], exactly y_0's
    indicator at t = 1 like the real one, a smooth function of (y_t, y_0, t) elsewhere."""
    import torch

    y_t, y_0 = torch.as_tensor(y_t), torch.as_tensor(y_0, dtype=y_t.dtype)
    tt = t.reshape(-1, *([1] * (y_t.dim() - 1))).to(y_t.dtype)
    smooth = torch.sigmoid(0.8 * y_t + 1.1 * y_0 + 0.05 * tt - 0.3)
    return torch.where(tt == 1, (y_0 > 0).to(y_t.dtype), smooth)


def stub_q_sample(y_0, t, u_replace, u_coin):
    """Stand-in for q_sample (isolates p_loss): flips y_0 where u_replace < 0.3."""
    import torch

    return torch.where(u_replace < 0.3, -y_0, y_0)


def stub_reverse_probs(logits, y_t, t):
    """Stand-in for reverse_probs in p_loss: the mixture of the stand-in posteriors."""
    import torch

    h = torch.sigmoid(logits)
    ones = torch.ones_like(y_t)
    return h * stub_posterior(y_t, ones, t) + (1 - h) * stub_posterior(y_t, -ones, t)


def stub_p_sample_value(y, t):
    """Stand-in for p_sample (isolates p_sample_loop): flips a pattern of pixels fixed by t."""
    import torch

    n = y[0].numel()
    idx = torch.arange(n, dtype=torch.float64).reshape(y.shape[1:])
    tt = t.to(torch.float64).reshape(-1, *([1] * (y.dim() - 1)))
    flip = torch.sin(1.3 * tt + 0.77 * idx) > 0.6
    return torch.where(flip, -y, y)


def _build(module, cfg, tensors, scale=1.5):
    """The student's BinaryDiffusion with a ProbeLogits and the reference buffers (sent by the
    grader) in place of its own; a failing __init__ (e.g. an unfinished schedule) is bypassed."""
    import torch
    from torch import nn

    model = probe_logits_class()(cfg.get("scale", scale))
    kwargs = dict(image_size=cfg.get("image_size", 4), channels=cfg.get("channels", 1),
                  timesteps=cfg["T"], delta=cfg["delta"])
    cls = module.BinaryDiffusion
    try:
        obj = cls(model, **kwargs)
    except Exception:
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj.model = model
        obj.image_size, obj.channels = kwargs["image_size"], kwargs["channels"]
        obj.num_timesteps, obj.delta = kwargs["timesteps"], float(kwargs["delta"])
    for name in ("p_replaced", "p_same"):
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

    return [x for x, _ in model.calls], [t.reshape(-1).to(torch.int64) for _, t in model.calls]


def probe_schedule(module, cfg, tensors, noise):
    import torch

    out = module.schedule(tensors["t"], cfg["delta"])
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return {"tuple": False}, {}
    return {"tuple": True}, {"p_replaced": torch.as_tensor(out[0]).detach().double(),
                             "p_same": torch.as_tensor(out[1]).detach().double()}


def probe_logits_to_probs(module, cfg, tensors, noise):
    import torch

    return {}, {"out": torch.as_tensor(module.logits_to_probs(tensors["logits"])).detach()}


def probe_q_sample(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors)
    with UniformPatch(99, module) as patch:
        out = obj.q_sample(tensors["y_0"], tensors["t"], tensors["u_replace"], tensors["u_coin"])
    return {"draws": patch.count + noise.count}, {"out": out}


def probe_q_posterior(module, cfg, tensors, noise):
    obj, _ = _build(module, cfg, tensors)
    return {}, {"out": obj.q_posterior(tensors["y_t"], tensors["y_0"], tensors["t"])}


def probe_reverse_probs(module, cfg, tensors, noise):
    """Twice: with the student's own q_posterior and logits_to_probs, and with stand-ins."""
    import torch

    obj, _ = _build(module, cfg, tensors)
    args = (tensors["logits"], tensors["y_t"], tensors["t"])
    out = {}
    try:
        out["own"] = obj.reverse_probs(*args)
    except Exception:  # e.g. an unfinished q_posterior: the isolated run decides
        pass
    obj.q_posterior = stub_posterior
    saved = getattr(module, "logits_to_probs", None)
    module.logits_to_probs = torch.sigmoid
    try:
        out["isolated"] = obj.reverse_probs(*args)
    finally:
        module.logits_to_probs = saved
    return {}, out


def probe_p_loss(module, cfg, tensors, noise):
    """Twice: with the student's own helpers, and with q_sample / q_posterior / reverse_probs /
    logits_to_probs replaced by stand-ins. Also the gradient of the loss to the model's scale."""
    import torch

    args = (tensors["y_0"], tensors["t"], tensors["u_replace"], tensors["u_coin"])
    header, out = {}, {}

    def run(obj, model, tag):
        loss = obj.p_loss(*args)
        loss = torch.as_tensor(loss)
        header[f"{tag}_calls"] = len(model.calls)
        header[f"{tag}_requires_grad"] = bool(loss.requires_grad)
        out[f"{tag}_loss"] = loss.detach()
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, [model.scale], allow_unused=True)
            out[f"{tag}_grad"] = grad if grad is not None else torch.tensor(float("nan"))
        xs, ts = _calls(model)
        if xs:
            out[f"{tag}_model_y"], out[f"{tag}_model_t"] = xs[0], ts[0]

    obj, model = _build(module, cfg, tensors)
    try:
        run(obj, model, "own")
    except Exception as exc:  # the isolated run decides
        header["own_error"] = f"{type(exc).__name__}: {exc}"[:300]
    obj, model = _build(module, cfg, tensors)
    obj.q_sample = stub_q_sample
    obj.q_posterior = stub_posterior
    obj.reverse_probs = stub_reverse_probs
    saved = getattr(module, "logits_to_probs", None)
    module.logits_to_probs = torch.sigmoid
    try:
        run(obj, model, "isolated")
    finally:
        module.logits_to_probs = saved
    return header, out


def probe_forward_isolated(module, cfg, tensors, noise):
    import torch

    obj, _ = _build(module, cfg, tensors)
    seen = []

    def p_loss(y_0, t, u_replace, u_coin):
        seen.append((t, u_replace, u_coin))
        return y_0.sum() * 0 + 3.5

    obj.p_loss = p_loss
    ret = obj.forward(tensors["y_0"])
    out = {"ret": torch.as_tensor(ret).detach()}
    header = {"p_loss_calls": len(seen)}
    if seen:
        t, u_r, u_c = seen[0]
        header["t_dtype"] = str(getattr(t, "dtype", type(t).__name__))
        out.update(t=torch.as_tensor(t).detach(), u_replace=torch.as_tensor(u_r).detach(),
                   u_coin=torch.as_tensor(u_c).detach())
    return header, out


def probe_p_sample(module, cfg, tensors, noise):
    """Given u and drawn u, each with the student's reverse_probs and with a stand-in."""
    import torch

    y, t = tensors["y_t"], tensors["t"]
    out = {}
    for tag in ("own", "isolated"):
        obj, _ = _build(module, cfg, tensors)
        if tag == "isolated":
            obj.reverse_probs = lambda logits, y_t, t_: torch.sigmoid(0.5 * logits + 0.2 * y_t)
        try:
            out[f"{tag}_given"] = obj.p_sample(y, t, tensors["u"])
            with UniformPatch(int(cfg.get("seed", 5)), module):
                out[f"{tag}_drawn"] = obj.p_sample(y, t)
        except Exception:
            if tag == "isolated":
                raise
    return {}, out


def probe_p_sample_loop_isolated(module, cfg, tensors, noise):
    import torch

    obj, _ = _build(module, cfg, tensors)
    calls = []

    def p_sample(y, t, u=None):
        calls.append(torch.as_tensor(t).detach().reshape(-1).clone())
        return stub_p_sample_value(y, torch.as_tensor(t))

    obj.p_sample = p_sample
    final = obj.p_sample_loop(tensors["y_T"].clone())
    n_final = len(calls)
    chain = obj.p_sample_loop(tensors["y_T"].clone(), return_chain=True)
    shapes_ok = all(c.numel() == tensors["y_T"].shape[0] for c in calls)
    steps = [int(c[0]) if c.numel() else -1 for c in calls[:n_final]]
    filled = all(bool((c == c[0]).all()) and c.dtype == torch.int64 for c in calls if c.numel())
    return ({"calls": n_final, "steps": steps, "t_ok": shapes_ok and filled},
            {"final": final, "chain": torch.as_tensor(chain)})


def probe_sample_isolated(module, cfg, tensors, noise):
    import torch

    obj, _ = _build(module, cfg, tensors)
    seen = []

    def p_sample_loop(y_T, return_chain=False):
        seen.append(torch.as_tensor(y_T).detach().clone())
        return y_T

    obj.p_sample_loop = p_sample_loop
    ret = obj.sample(int(cfg["batch_size"]))
    out = {"ret": torch.as_tensor(ret).detach()}
    if seen:
        out["y_T"] = seen[0]
    return {"loop_calls": len(seen)}, out


PROBES = {
    "schedule": probe_schedule,
    "logits_to_probs": probe_logits_to_probs,
    "q_sample": probe_q_sample,
    "q_posterior": probe_q_posterior,
    "reverse_probs": probe_reverse_probs,
    "p_loss": probe_p_loss,
    "forward_isolated": probe_forward_isolated,
    "p_sample": probe_p_sample,
    "p_sample_loop_isolated": probe_p_sample_loop_isolated,
    "sample_isolated": probe_sample_isolated,
}
