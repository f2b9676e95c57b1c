"""Test-only stand-in for ``libneuronxla.neuron_cc_cache``: names optimum-neuron's hub cache imports.

Loading a compiled pipeline never uses the compile cache; each name raises if used.
"""

from typing import Any


class _Unavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{type(self).__name__}: the Neuron compile cache is not available in this stand-in")


class CacheUrl(_Unavailable):
    pass


class CompileCache(_Unavailable):
    pass


class CompileCacheFs(CompileCache):
    pass


class CompileCacheS3(CompileCache):
    pass


def create_compile_cache(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("create_compile_cache: the Neuron compile cache is not available in this stand-in")
