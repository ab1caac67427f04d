"""The process boundary: everything that runs in a worker or travels to and from one.

* :mod:`.protocol`: the run's payload, references to it, a batch's result, the buffer layout.
* :mod:`.board`: the shared-memory status board (who runs which iteration, since when).
* :mod:`.scratch`: scratch memory shared with the workers (a memfd, else a 0600 file).
* :mod:`.batch`: running a batch of iterations in a worker.

This package imports nothing of parmagic outside itself but :mod:`parmagic.errors`,
so a worker process imports no IPython, no ipywidgets and no engine.
"""
