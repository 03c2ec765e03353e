"""Faster training steps and sampling: CUDA graphs or torch.compile, with a fallback to eager.

At the homework's size (a 32x32 U-Net of width 16) a GPU spends most of each step waiting for
Python to launch the next of a few hundred tiny kernels. Two ways around that:

  graphs   capture one whole training step (forward, backward, Adam) in a CUDA graph once,
           then replay it: one launch per step (PyTorch's "whole network capture" recipe).
           Sampling captures a whole reverse process (all T steps) per batch size. CUDA only.
  compile  torch.compile(fullgraph=True) of the loss (Diffusion.forward) and of the U-Net for
           sampling: fused kernels, still launched from Python. Works on the CPU too, but
           compiling takes a minute or more.
  off      plain eager PyTorch.
  auto     graphs on CUDA, off on the CPU (measured: see the README's benchmark section).

Both fast paths need code they can trace as a whole: a `forward` that calls `.item()` or moves
data to the CPU cannot be captured in a CUDA graph, and one that branches on a tensor's value
can be neither captured nor compiled whole. Then the step falls back to eager with one line
saying why, and training goes on (the failed batch is redone eagerly, so no step is lost or
done twice).

What each path returns is what eager returns, up to the order of floating-point operations and
random numbers (the same distribution; not the same draws), so losses agree in distribution.
Checkpoints are written the same way whatever the path (see `portable_optimizer_state`).
"""

from contextlib import nullcontext

import torch

FAST_MODES = ("auto", "graphs", "compile", "off")
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as PyTorch's recipe does


def resolve_mode(mode, device):
    """The fast path `mode` means on `device`: 'graphs', 'compile' or 'off'."""
    if mode not in FAST_MODES:
        raise ValueError(f"fast mode must be one of {', '.join(FAST_MODES)}; got {mode!r}")
    if mode == "auto":
        return "graphs" if torch.device(device).type == "cuda" else "off"
    return mode


def one_line(error):
    """An exception as one short line, for the fallback message."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


# ---------------------------------------------------------------- optimizer state

def portable_optimizer_state(state_dict):
    """The optimizer state as an eager Adam writes it: capturable off, step counters on the CPU.

    Adam(capturable=True) (needed inside a CUDA graph) keeps its step counters on the GPU and
    records capturable=True, which an optimizer on the CPU refuses to step with. Checkpoints
    store this portable form, so one written on any path resumes on any other.
    """
    groups = [{**g, "capturable": False} if "capturable" in g else dict(g)
              for g in state_dict["param_groups"]]
    state = {key: {name: (value.detach().to("cpu", torch.float32)
                          if name == "step" and torch.is_tensor(value) else value)
                   for name, value in per_param.items()}
             for key, per_param in state_dict["state"].items()}
    return {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer, state_dict):
    """Load a (portable) optimizer state, keeping `optimizer`'s own capturable setting."""
    groups = [{**saved, "capturable": current.get("capturable", False)}
              for saved, current in zip(state_dict["param_groups"], optimizer.param_groups,
                                        strict=False)]
    optimizer.load_state_dict({"state": state_dict["state"], "param_groups": groups})


# ---------------------------------------------------------------- training steps

class EagerStep:
    """One optimizer step in plain PyTorch: zero_grad, loss, backward, Adam.

    Called with a batch of images (B, C, H, W) in [-1, 1]; returns the loss, detached.
    """

    name = "off"
    ready = True

    def __init__(self, diffusion, optimizer, *, autocast=nullcontext, scaler=None,
                 set_to_none=True):
        self.diffusion = diffusion
        self.optimizer = optimizer
        self.autocast = autocast
        self.scaler = scaler
        self.set_to_none = set_to_none

    def __call__(self, images):
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        with self.autocast():
            loss = self.diffusion(images)
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()


class CompiledStep(EagerStep):
    """EagerStep with the loss (Diffusion.forward) compiled whole by torch.compile."""

    name = "compile"

    def __init__(self, diffusion, optimizer, *, autocast=nullcontext, scaler=None,
                 backend="inductor"):
        compiled = torch.compile(diffusion, fullgraph=True, backend=backend)
        super().__init__(compiled, optimizer, autocast=autocast, scaler=scaler)
        self.ready = False  # compilation happens at the first call

    def __call__(self, images):
        loss = super().__call__(images)
        self.ready = True
        return loss


class GraphedStep:
    """A whole training step captured in one CUDA graph and replayed (CUDA only).

    PyTorch's whole-network capture recipe: a few eager warm-up steps on a side stream (they
    are real training steps), then the capture of forward, backward and Adam(capturable=True)
    with the gradients set to None just before, so that backward inside the graph allocates
    them (from the graph's private memory) and every replay overwrites them rather than
    accumulating. Each call copies the batch into the graph's static input and replays. The
    random time indices and noise drawn inside the graph are fresh at each replay.
    """

    name = "graphs"

    def __init__(self, diffusion, optimizer, *, autocast=nullcontext, scaler=None,
                 warmup=GRAPH_WARMUP_STEPS):
        device = next(diffusion.parameters()).device
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; the model is on {device}")
        if not all(g.get("capturable") for g in optimizer.param_groups):
            raise RuntimeError("CUDA graphs need Adam(capturable=True)")
        if scaler is not None and scaler.is_enabled():
            raise RuntimeError("fp16 loss scaling cannot be captured (use bf16 or float32)")
        self.diffusion = diffusion
        self.optimizer = optimizer
        self.autocast = autocast
        self.warmup = int(warmup)
        # Zeroing in place keeps .grad in the graph's tensors across an eager step.
        self.eager = EagerStep(diffusion, optimizer, autocast=autocast, set_to_none=False)
        self.calls = 0
        self.graph = None
        self.static_images = None
        self.static_loss = None
        self.ready = False

    def _capture(self, images):
        self.static_images = images.clone(memory_format=torch.preserve_format)
        # The recipe: grads None before capture, so backward in the graph allocates them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with self.autocast():
                loss = self.diffusion(self.static_images)
            loss.backward()
            self.optimizer.step()
        self.static_loss = loss.detach()
        self.graph = graph

    def __call__(self, images):
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self.eager(images)
            return _on_current_stream(loss, side)
        if self.graph is None:
            self._capture(images)  # records only: the step itself runs in the replay below
        elif images.shape != self.static_images.shape:
            return self.eager(images)  # an odd-sized batch: one eager step
        else:
            self.static_images.copy_(images)
        self.graph.replay()
        self.ready = True
        return self.static_loss.clone()


def _on_current_stream(tensor, side):
    """Hand a tensor made on the `side` stream to the current one (wait, and keep its memory
    from being reused while the current stream may still read it)."""
    current = torch.cuda.current_stream()
    current.wait_stream(side)
    tensor.record_stream(current)
    return tensor


class WithFallback:
    """Call a fast implementation; if it fails before it is ready, say why once, go eager.

    `fast` and `eager` are callables on the same arguments. While `fast.ready` is False (it has
    not yet compiled or captured), an exception from it is reported as one line through `log`
    and the same call is redone by `eager`, which is used from then on. Once `fast` is ready,
    its errors propagate like any other. An error that eager also raises (a real bug, such as a
    wrong image size) therefore surfaces from eager, with its own traceback.
    """

    def __init__(self, fast, eager, *, what, log=print):
        self.fast = fast
        self.eager = eager
        self.what = what
        self.log = log
        self.failure = None  # the one-line reason, once fallen back

    @property
    def name(self):
        return self.eager.name if self.fast is None else self.fast.name

    def __call__(self, *args):
        if self.fast is None:
            return self.eager(*args)
        if self.fast.ready:
            return self.fast(*args)
        try:
            return self.fast(*args)
        except Exception as error:  # any failure to trace or capture means: run eagerly
            self.fallback(error)
            return self.eager(*args)

    def fallback(self, error, name=None):
        self.failure = one_line(error)
        self.log(f"{self.what}: fast path '{name or self.fast.name}' failed ({self.failure}); "
                 f"running eagerly")
        self.fast = None

    @classmethod
    def build(cls, mode, make_fast, eager, *, what, log):
        """WithFallback around make_fast() (eager alone for mode 'off', or if building fails)."""
        wrapper = cls(None, eager, what=what, log=log)
        if mode != "off":
            try:
                wrapper.fast = make_fast()
            except Exception as error:  # e.g. graphs without CUDA
                wrapper.fallback(error, mode)
        return wrapper


def make_train_step(diffusion, optimizer, mode, *, autocast=nullcontext, scaler=None,
                    compile_backend="inductor", log=print):
    """The training step for a resolved `mode` ('graphs', 'compile' or 'off'), with fallback.

    Returns a callable images -> detached loss that does one optimizer step, with `.name`
    (the path in use) and `.failure` (why it fell back, or None).
    """
    def make_fast():
        if mode == "compile":
            return CompiledStep(diffusion, optimizer, autocast=autocast, scaler=scaler,
                                backend=compile_backend)
        return GraphedStep(diffusion, optimizer, autocast=autocast, scaler=scaler)

    eager = EagerStep(diffusion, optimizer, autocast=autocast, scaler=scaler)
    return WithFallback.build(mode, make_fast, eager, what="training", log=log)


# ---------------------------------------------------------------- sampling

class EagerSampler:
    """n -> diffusion.sample(n): the student's sampler as it is."""

    name = "off"
    ready = True

    def __init__(self, diffusion):
        self.diffusion = diffusion

    def __call__(self, n):
        return self.diffusion.sample(n)


class GraphedSampler:
    """diffusion.sample(n) captured whole (all T reverse steps) in one CUDA graph per n.

    The first call for a batch size runs eagerly on a side stream (the warm-up, and real
    samples); the second captures and replays; later ones replay. The noise drawn inside the
    graph is fresh at each replay and follows torch.manual_seed like eager sampling does.
    """

    name = "graphs"

    def __init__(self, diffusion):
        device = next(diffusion.parameters()).device
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device; the model is on {device}")
        self.diffusion = diffusion
        self.graphs = {}  # n -> (graph, static output)
        self.warmed = set()

    # Each new batch size is a new capture, so a failure can come at any call: never "ready",
    # and any error falls back (an error eager shares still surfaces, from eager).
    ready = False

    def __call__(self, n):
        if n in self.graphs:
            graph, out = self.graphs[n]
            graph.replay()
            return out.clone()
        if n not in self.warmed:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                images = self.diffusion.sample(n)
            self.warmed.add(n)
            return _on_current_stream(images, side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.diffusion.sample(n)
        self.graphs[n] = (graph, out)
        graph.replay()
        return out.clone()


class CompiledSampler:
    """diffusion.sample(n) with the U-Net compiled (the loop around it stays eager)."""

    name = "compile"

    def __init__(self, diffusion, backend="inductor"):
        self.diffusion = diffusion
        self.compiled = torch.compile(diffusion.model, fullgraph=True, backend=backend)

    ready = False  # a new batch size or grad mode recompiles: any call may fail

    def __call__(self, n):
        original = self.diffusion.model
        self.diffusion.model = self.compiled  # for this call only: checkpoints keep plain names
        try:
            images = self.diffusion.sample(n)
        finally:
            self.diffusion.model = original
        return images


def make_sampler(diffusion, mode, *, compile_backend="inductor", log=print):
    """n -> n images in [0, 1] from `diffusion` through the fast path `mode`, with fallback."""
    def make_fast():
        if mode == "compile":
            return CompiledSampler(diffusion, backend=compile_backend)
        return GraphedSampler(diffusion)

    return WithFallback.build(mode, make_fast, EagerSampler(diffusion), what="sampling",
                              log=log)
