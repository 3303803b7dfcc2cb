"""The pure core: values, the codec, signatures, the memory chain, policy and the cycle.

Nothing in this package does I/O, reads a clock or draws randomness of its own: times,
ids and keys are passed in by the shell (``peo.store``, ``peo.node``, ``peo.client``,
``peo.cli``). ``tests/core/test_purity.py`` checks both the imports and the code.
"""
