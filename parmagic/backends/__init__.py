"""Backends: where a run's batches execute.

Each backend implements :class:`parmagic.backends.base.Backend`. ``get_backend``
maps an option value to an instance; process pools are kept per kernel by
:mod:`parmagic.pool`.
"""
