"""The wire format between the grader and the sandbox: no pickle, sizes checked.

Both directions: a 16-byte header (two little-endian u64: JSON length, payload length), a JSON
object whose "arrays" list names each array's dtype, shape and size, then the raw bytes. The
reader checks every size and allows only plain numeric dtypes.

Standalone (stdlib and numpy): it is copied into the sandbox beside worker.py.
"""

import json
import math
import struct

ALLOWED_DTYPES = ("<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1")
HEADER = struct.Struct("<QQ")
MAX_JSON = 1 << 20


class WireError(Exception):
    """A message that is malformed, too large, or cut short."""


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
