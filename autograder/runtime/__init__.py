"""The sandbox runtime: runs untrusted code and brings back numbers. It knows no homework part.

sandbox.py (grader side) starts worker.py (the zygote and its forked children) with wire.py (the
message format) and probekit.py (helpers for a part's probes) copied beside it.
"""
