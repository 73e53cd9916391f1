import pytest

from secinfer.net import run_in_memory, run_tls_threads


@pytest.fixture(params=["memory", "tls"])
def run3(request):
    """Run an SPMD program on 3 parties over the in-memory or the real TLS transport."""
    runner = run_in_memory if request.param == "memory" else run_tls_threads

    def go(program, *args, **kwargs):
        return runner(3, program, *args, timeout=60.0, **kwargs)

    go.transport = request.param
    return go
