"""The only code that runs next to student code: a zygote and the probes it forks.

This file is copied into the sandbox directory and run there as
``python -I worker.py zygote --fd N [--user UID:GID] [--hide PATH ...]``. It is standalone (stdlib,
numpy, torch) because the grader's own tree is hidden from it.

Start-up, still as root: a private mount namespace (each --hide path is covered by an empty
tmpfs, or /dev/null for a file), a private network namespace, then setgroups/setgid/setuid to
the unprivileged user. Only then are numpy and torch imported, and no torch op runs before a fork
(OpenMP thread pools do not survive fork).

Per probe the grader sends the zygote one end of a fresh socketpair; the zygote forks a child that
starts a new session, takes its limits (address space, file size, processes, CPU), sends its
stdout/stderr to a size-capped file, imports the submission, runs ONE probe and sends the outputs
back. Probes only produce tensors; every verdict is computed by the grader. Nothing here knows an
expected value.

Wire format (both directions, no pickle): 16-byte header (two little-endian u64: JSON length,
payload length), a JSON object whose "arrays" list names each array's dtype, shape and size, then
the raw bytes. The reader checks every size and allows only plain numeric dtypes.

The grader imports this module too, for the wire format and for the deterministic pieces both
sides must agree on (ProbeModel, probe_noise, the stubs used to isolate one function from another).
"""

import json
import math
import os
import socket
import struct
import sys

CONTRACT_BUFFERS = (
    "alphas", "alphas_cumprod", "alphas_cumprod_prev",
    "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2",
)
ALLOWED_DTYPES = ("<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1")
HEADER = struct.Struct("<QQ")
MAX_JSON = 1 << 20


class WireError(Exception):
    """A message that is malformed, too large, or cut short."""


# ----------------------------------------------------------------------------- wire format

def send_msg(sock, header, arrays=None):
    """Send a JSON-able dict and a dict of numpy arrays."""
    import numpy as np

    metas, blobs = [], []
    for name, a in (arrays or {}).items():
        a = np.ascontiguousarray(a)
        if a.dtype.str not in ALLOWED_DTYPES:
            a = a.astype(np.float64)
        blob = a.tobytes()
        metas.append({"name": str(name), "dtype": a.dtype.str, "shape": list(a.shape),
                      "nbytes": len(blob)})
        blobs.append(blob)
    body = json.dumps(dict(header, arrays=metas)).encode()
    payload = b"".join(blobs)
    sock.sendall(HEADER.pack(len(body), len(payload)) + body + payload)


def _recv_exact(sock, n):
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise WireError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_msg(sock, max_payload):
    """Receive one message; returns (header dict, {name: numpy array}). Never unpickles."""
    import numpy as np

    n_json, n_payload = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if n_json > MAX_JSON or n_payload > max_payload:
        raise WireError(f"message too large ({n_json} + {n_payload} bytes)")
    header = json.loads(_recv_exact(sock, n_json))
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise WireError("malformed header")
    payload = memoryview(_recv_exact(sock, n_payload))
    arrays, offset = {}, 0
    for meta in header.pop("arrays"):
        dtype, shape, nbytes = meta.get("dtype"), meta.get("shape"), meta.get("nbytes")
        if dtype not in ALLOWED_DTYPES or not isinstance(shape, list) or not all(
                isinstance(s, int) and 0 <= s < 1 << 31 for s in shape) or len(shape) > 8:
            raise WireError(f"bad array description {meta!r}")
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize != nbytes or offset + nbytes > n_payload:
            raise WireError(f"array size mismatch in {meta!r}")
        arrays[str(meta.get("name"))] = np.frombuffer(
            payload[offset:offset + nbytes], dtype=dt).reshape(shape).copy()
        offset += nbytes
    return header, arrays


# ----------------------------------------------------------------------------- shared pieces

def probe_noise(seed, k, shape, _randn=None):
    """The k-th standard normal draw a probe hands out: float32 on the CPU, from (seed, k) only.

    Both sides call this: the worker to answer the student's noise calls, the grader to know what
    was answered, so no noise ever travels back from the untrusted process.
    """
    import torch

    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(k))
    return (_randn or torch.randn)(tuple(int(s) for s in shape), generator=g, dtype=torch.float32)


def _probe_model_class():
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


# ----------------------------------------------------------------------------- sandbox start

def _hide_and_drop(user, hide):
    """As root: private mount + network namespaces, hide the grader's paths, become `user`."""
    import ctypes

    notes = []
    libc = ctypes.CDLL(None, use_errno=True)
    if hide:
        if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
            notes.append(f"no mount namespace (errno {ctypes.get_errno()}); relying on permissions")
        else:
            # MS_REC | MS_PRIVATE on /: our mounts stay ours.
            libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None)
            notes += _cover_all_but(libc, [sys.prefix, sys.base_prefix, os.getcwd()])
            for path in hide:
                p = os.fsencode(path)
                if os.path.isdir(path):
                    rc = libc.mount(b"tmpfs", p, b"tmpfs", 0x1 | 0x2 | 0x8,  # RDONLY NOSUID NOEXEC
                                    b"size=4k,mode=000")
                elif os.path.exists(path):
                    rc = libc.mount(b"/dev/null", p, None, 0x1000, None)  # MS_BIND
                else:
                    continue
                if rc != 0:
                    notes.append(f"could not hide {path} (errno {ctypes.get_errno()})")
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET: no network for student code
        notes.append("no network namespace")
    if user:
        uid, gid = user
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: children of the same user cannot ptrace us
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of a probe come back to us
    return notes


# Top-level folders the interpreter and torch need; every other one is covered (allowlist, so a
# second checkout of the grader elsewhere on the machine is as invisible as the first).
SYSTEM_DIRS = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "sys"}


def _cover_all_but(libc, keep):
    """Cover every non-system top-level folder with an empty tmpfs, then bind `keep` back.

    `keep`: the interpreter's prefixes and the sandbox folder. Each is opened (O_PATH) before the
    covering and bound back through /proc/self/fd, so nothing else under, e.g., /root, /work, /tmp
    or /autograder stays reachable; /tmp becomes a private, empty tmpfs.
    """
    import ctypes

    notes = []
    handles = {k: os.open(k, os.O_PATH) for k in sorted({os.path.realpath(k) for k in keep})}
    for entry in sorted(os.listdir("/")):
        top = "/" + entry
        if entry in SYSTEM_DIRS or os.path.islink(top) or not os.path.isdir(top):
            continue
        # torch's import needs a writable temp folder: a private, capped /tmp.
        options = b"size=64m,mode=1777" if top == "/tmp" else b"size=64k,mode=711"
        if libc.mount(b"tmpfs", os.fsencode(top), b"tmpfs", 0x2 | 0x4, options) != 0:  # NOSUID NODEV
            notes.append(f"could not cover {top} (errno {ctypes.get_errno()})")
    for path, fd in handles.items():
        try:
            visible = os.path.samestat(os.stat(path), os.fstat(fd))
        except OSError:
            visible = False
        if not visible:
            os.makedirs(path, mode=0o711, exist_ok=True)
            if libc.mount(os.fsencode(f"/proc/self/fd/{fd}"), os.fsencode(path), None,
                          0x1000 | 0x4000, None) != 0:  # MS_BIND | MS_REC
                notes.append(f"could not expose {path} (errno {ctypes.get_errno()})")
        os.close(fd)
    return notes


def zygote_main(argv):
    fd = int(argv[argv.index("--fd") + 1])
    user = None
    if "--user" in argv:
        uid, gid = argv[argv.index("--user") + 1].split(":")
        user = (int(uid), int(gid))
    hide = [argv[i + 1] for i, a in enumerate(argv) if a == "--hide"]
    notes = _hide_and_drop(user, hide)

    import numpy  # noqa: F401  (imported once here, shared by every fork)
    import torch  # noqa: F401
    import torch.nn.functional  # noqa: F401

    # The first op on the meta device loads ~150 MB of Python (symbolic shapes) in ~3 s: do it
    # once here rather than in every probe. Meta ops start no thread pool, so fork stays safe.
    (torch.zeros(1, device="meta") * 2).clamp(-1, 1)
    sock = socket.socket(fileno=fd)
    send_msg(sock, {"ready": True, "uid": os.getuid(), "notes": notes})
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        command = json.loads(msg)
        if command.get("op") == "spawn" and fds:
            for extra in fds[1:]:
                os.close(extra)
            pid = os.fork()
            if pid == 0:
                sock.close()
                try:
                    child_main(fds[0], command)
                finally:
                    os._exit(0)
            os.close(fds[0])
            sock.sendall(json.dumps({"pid": pid}).encode())
        elif command.get("op") == "cleanup":
            _kill_children()
            sock.sendall(b'{"ok": true}')
        else:
            for extra in fds:
                os.close(extra)
            sock.sendall(b'{"error": "unknown op"}')


def _kill_children():
    """SIGKILL and reap every process whose parent is us (probe children and their orphans)."""
    import signal
    import time

    me = os.getpid()
    for _ in range(20):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                found = True
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not found:
            return
        time.sleep(0.01)


# ----------------------------------------------------------------------------- a probe child

def child_main(fd, command):
    import resource
    import signal

    os.setsid()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap fail instead of killing
    limits = command.get("limits", {})
    log = os.open(os.path.join(command["scratch"], "output.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(command["scratch"])
    if limits.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    if limits.get("cpu"):
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    if limits.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
    if limits.get("address_space"):
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        cap = vm + limits["address_space"]
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    import numpy as np
    import torch

    sock = socket.socket(fileno=fd)
    try:
        header, arrays = recv_msg(sock, max_payload=1 << 28)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        reply, out = run_probe(header, tensors)
    except BaseException as exc:  # the probe's own failure is a result, not a crash
        reply, out = _error_reply(exc), {}
    sys.stdout.flush()
    sys.stderr.flush()
    arrays_out = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            v = v.detach()
            if v.device.type != "cpu":
                v = v.to("cpu")
            if v.dtype == torch.bfloat16:
                v = v.float()
            arrays_out[k] = v.contiguous().numpy()
        else:
            arrays_out[k] = np.asarray(v)
    send_msg(sock, reply, arrays_out)
    sock.close()


def _error_reply(exc):
    import traceback

    tb = traceback.extract_tb(exc.__traceback__)
    student = [f for f in tb if os.path.basename(f.filename) in ("diffusion.py", "unet.py")]
    where = student[-1] if student else (tb[-1] if tb else None)
    return {
        "ok": False,
        "error_type": type(exc).__name__,
        "message": str(exc)[:2000],
        "not_implemented": isinstance(exc, NotImplementedError),
        "where": (f"{os.path.basename(where.filename)}, line {where.lineno}, in {where.name}"
                  if where else ""),
    }


# ----------------------------------------------------------------------------- probes

class _NoisePatch:
    """Answer every standard-normal draw (torch.randn, randn_like, normal, Tensor.normal_) with
    probe_noise(seed, k, shape), k = 0, 1, ... in call order, in the requested dtype and device."""

    def __init__(self, seed):
        import torch

        self.torch, self.seed, self.count = torch, seed, 0
        self.saved = {}

    def _draw(self, shape, dtype=None, device=None):
        torch = self.torch
        z = probe_noise(self.seed, self.count, shape, _randn=self.saved["randn"])
        self.count += 1
        z = z.to(dtype or torch.get_default_dtype())
        return z.to(device) if device is not None else z

    def __enter__(self):
        torch, patch = self.torch, self

        def shape_of(args, kwargs):
            if "size" in kwargs:
                args = (kwargs["size"],)
            if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
                return tuple(args[0])
            return tuple(int(a) for a in args)

        def randn(*args, dtype=None, device=None, **kwargs):
            out = patch._draw(shape_of(args, kwargs), dtype, device)
            return out.requires_grad_(True) if kwargs.get("requires_grad") else out

        def randn_like(x, *, dtype=None, device=None, **kwargs):
            return patch._draw(x.shape, dtype or x.dtype, device or x.device)

        def normal(mean=0.0, std=1.0, size=None, *, generator=None, dtype=None, device=None,
                   **kwargs):
            if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
                ref = mean if isinstance(mean, torch.Tensor) else std
                shape = torch.broadcast_shapes(getattr(mean, "shape", ()), getattr(std, "shape", ()))
                return patch._draw(shape, ref.dtype, ref.device) * std + mean
            return patch._draw(tuple(size), dtype, device) * std + mean

        def normal_(self_tensor, mean=0.0, std=1.0, *, generator=None):
            with torch.no_grad():
                self_tensor.copy_(patch._draw(self_tensor.shape, self_tensor.dtype,
                                              self_tensor.device) * std + mean)
            return self_tensor

        self.saved = {"randn": torch.randn, "randn_like": torch.randn_like,
                      "normal": torch.normal, "normal_": torch.Tensor.normal_}
        torch.randn, torch.randn_like, torch.normal = randn, randn_like, normal
        torch.Tensor.normal_ = normal_
        return self

    def __exit__(self, *exc):
        torch = self.torch
        torch.randn, torch.randn_like = self.saved["randn"], self.saved["randn_like"]
        torch.normal, torch.Tensor.normal_ = self.saved["normal"], self.saved["normal_"]
        return False


def _import_submission(command):
    import importlib.util

    folder = command["submission_dir"]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = command.get("module", "diffusion")
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _build(module, cfg, tensors, inject):
    """The student's Diffusion with a ProbeModel; with `inject`, the reference buffers (sent by
    the grader) replace the contract buffers, and a failing __init__ is bypassed."""
    import torch
    from torch import nn

    ProbeModel = _probe_model_class()
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


def run_probe(header, tensors):
    """Run one probe; returns (reply dict, {name: tensor})."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(int(header.get("seed", 0)))
    kind, cfg = header["probe"], header.get("cfg", {})
    noise = _NoisePatch(int(header.get("noise_seed", 0)))
    with noise:  # patched before the import, so `from torch import randn` sees it too
        module = _import_submission(header)
        if kind == "import":
            return {"ok": True}, {}
        handler = PROBES[kind]
        reply, out = handler(module, cfg, tensors, noise)
    reply.setdefault("ok", True)
    reply["noise_draws"] = noise.count
    return reply, out


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


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "zygote":
        zygote_main(sys.argv[2:])
    else:
        sys.exit("usage: python -I worker.py zygote --fd N [--user UID:GID] [--hide PATH]...")
