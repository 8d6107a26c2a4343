"""The pure core: plain, synchronous, deterministic given a seed.

No sockets, no event loop, no clocks, no files: events in, decisions out.
"""
