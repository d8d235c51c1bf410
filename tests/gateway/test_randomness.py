"""The buffered CSPRNG pool never hands the same bytes out twice, and refills after fork."""

from __future__ import annotations

import os

from gateway.randomness import RandomPool


def test_draws_are_distinct_across_refills() -> None:
    pool = RandomPool(size=64)
    draws = [pool.take(12) for _ in range(200)]  # crosses many refills
    assert all(len(d) == 12 for d in draws)
    assert len(set(draws)) == len(draws)
    assert len(pool.token_hex(16)) == 32
    assert len(pool.take(1000)) == 1000  # larger than the pool: straight from the kernel


def test_a_forked_child_does_not_reuse_the_parents_bytes() -> None:
    pool = RandomPool(size=4096)
    pool.take(8)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write_end, pool.take(16))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child != pool.take(16)
