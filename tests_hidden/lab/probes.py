"""Part 3 (the notebook lab): probes. Runs INSIDE the sandbox, next to the student's functions.

The module under test is the submitted notebook reduced to its imports and definitions
(autograder/notebook.py). A probe calls one graded function on inputs the grader sent and returns
what it returned; it knows no expected value. Where a graded function may delegate to another
graded function (forward_step -> compute_mean, mean_loss -> posterior_mean, reverse_step ->
mean_from_eps, sample -> reverse_step, training_loss -> q_sample), that helper is replaced by a
stand-in with a known formula (STANDINS, which the grader evaluates too), so a bug in the helper
costs points only in the helper's own test.

PROBES = {kind: fn(module, cfg, tensors, noise) -> (header dict, {name: tensor})}.
"""


import torch

# ----------------------------------------------------------------------------- shared pieces


def _tview(t, like):
    """t (int, 0-d or (B,) tensor) shaped to broadcast against the batch tensor `like`."""
    t = torch.as_tensor(t, dtype=like.dtype)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() == 1 else t


STANDINS = {
    "compute_mean": lambda x_prev, beta_t: 0.5 * x_prev + 0.25,
    "posterior_mean": lambda x_t, x0, t, betas: 0.3 * x_t + 0.6 * x0 + 0.01 * t,
    "mean_from_eps": lambda x_t, eps, t, betas: 0.7 * x_t - 0.2 * eps + 0.01 * t,
    "reverse_step": lambda x_t, eps_pred, t, betas, noise:
        0.9 * x_t + 0.1 * eps_pred + 0.5 * noise + 0.01 * t,
    "q_sample": lambda x0, t, alphas, noise: 0.8 * x0 + 0.6 * noise + 0.01 * _tview(t, x0),
}


def probe_model(T):
    """A deterministic stand-in for eps_theta(x, t), t a (B,) tensor in 1..T."""
    def eps(x, t):
        phase = _tview(torch.as_tensor(t), x) * (3.0 / T)
        return 0.5 * torch.tanh(0.8 * x + torch.sin(phase))
    return eps


def oracle_model(c, alphas):
    """The exact noise predictor when every training image is c: (x - sqrt(abar_t) c) / sqrt(1 - abar_t)."""
    abar = torch.cumprod(alphas.double(), 0)

    def eps(x, t):
        a = _tview(abar[torch.as_tensor(t).long() - 1], x.double())
        return ((x.double() - a.sqrt() * c.double()) / (1 - a).sqrt()).to(x.dtype)
    return eps


def zero_model(x, t):
    return torch.zeros_like(x)


# ----------------------------------------------------------------------------- probes

class _Recorder:
    """Wraps a model or stand-in; records the t it is given (and, with keep, the tensors)."""

    def __init__(self, fn, keep=False):
        self.fn, self.keep, self.calls = fn, keep, []

    def __call__(self, *args):
        out = self.fn(*args)
        self.calls.append((args, out) if self.keep else (None, None))
        return out


def _arg(spec, tensors, recorders):
    if "a" in spec:
        return tensors[spec["a"]].clone()
    if "v" in spec:
        return spec["v"]
    if "shape" in spec:
        return tuple(spec["shape"])
    if spec["model"] == "probe":
        fn = probe_model(spec["T"])
    elif spec["model"] == "zero":
        fn = zero_model
    else:
        fn = oracle_model(tensors[spec["c"]], tensors[spec["alphas"]])
    recorders["model"] = _Recorder(fn, keep=spec.get("keep", False))
    return recorders["model"]


def _outputs(result):
    if isinstance(result, torch.Tensor):
        return {"type": "tensor"}, {"out": result.detach()}
    if isinstance(result, (tuple, list)) and len(result) <= 8:
        out, types = {}, []
        for i, r in enumerate(result):
            if isinstance(r, torch.Tensor):
                out[f"out{i}"] = r.detach()
                types.append("tensor")
            elif isinstance(r, (int, float)) and not isinstance(r, bool):
                out[f"out{i}"] = torch.tensor(float(r), dtype=torch.float64)
                types.append("number")
            else:
                types.append(type(r).__name__)
        return {"type": "tuple", "types": types}, out
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return {"type": "number"}, {"out": torch.tensor(float(result), dtype=torch.float64)}
    return {"type": type(result).__name__}, {}


def probe_call(module, cfg, tensors, noise):
    """Call cfg["fn"] with cfg["args"]; stand-ins replace the helpers named in cfg["stubs"]."""
    recorders = {}
    for name in cfg.get("stubs", ()):
        recorders[name] = _Recorder(STANDINS[name], keep=cfg.get("keep_stub", False))
        setattr(module, name, recorders[name])
    fn = getattr(module, cfg["fn"], None)
    if fn is None:
        raise NotImplementedError(f"{cfg['fn']} is not defined in the notebook")
    args = [_arg(a, tensors, recorders) for a in cfg.get("args", ())]
    result = fn(*args)
    header, out = _outputs(result)
    header["stub_calls"] = {n: len(recorders[n].calls) for n in cfg.get("stubs", ())}
    model = recorders.get("model")
    if model is not None:
        header["model_calls"] = len(model.calls)
        if model.keep and model.calls:
            ts = [torch.as_tensor(a[1]).reshape(-1).long() for a, _ in model.calls]
            if len({len(t) for t in ts}) == 1:
                out["model_t"] = torch.stack(ts)
    for name in cfg.get("stubs", ()):
        rec = recorders[name]
        if rec.keep and rec.calls and name == "reverse_step":
            try:  # (x_t, eps_pred, t, betas, noise) of each call, in call order
                out["rs_x"] = torch.stack([a[0].detach() for a, _ in rec.calls])
                out["rs_eps"] = torch.stack([a[1].detach() for a, _ in rec.calls])
                out["rs_t"] = torch.tensor([float(a[2]) for a, _ in rec.calls])
                out["rs_noise"] = torch.stack([a[4].detach() for a, _ in rec.calls])
                out["rs_out"] = torch.stack([o.detach() for _, o in rec.calls])
            except Exception as exc:  # odd argument types: the grader reports the call shape
                header["record_error"] = f"{type(exc).__name__}: {exc}"
    return header, out


PROBES = {"call": probe_call}
