"""Other libraries' private names, each behind one small function, in one module per library.

The bottom layer of the package (it imports nothing from ``hf_lpwd``). Every entry says which private name it
reads, and why no public seam serves; ``tests/test_compat.py`` holds one guard test per entry, which fails
with a message naming the upstream change when the name or its meaning goes. A new private name goes here,
with its guard, never inline at a call site.
"""
