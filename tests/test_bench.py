"""gaugeformer/bench.py: points, the measurement environment and the growth exponent (no timing here)."""

import argparse
import time

import pytest

from gaugeformer import bench


def test_malloc_env_adds_or_removes_only_the_hugetlb_tunable():
    base = {"GLIBC_TUNABLES": "glibc.foo.bar=1:glibc.malloc.hugetlb=0", "OTHER": "x"}
    env = bench.malloc_env("hugetlb", base)
    assert env["GLIBC_TUNABLES"] == "glibc.foo.bar=1:glibc.malloc.hugetlb=1" and env["OTHER"] == "x"
    assert bench.malloc_env("default", base)["GLIBC_TUNABLES"] == "glibc.foo.bar=1"
    assert bench.malloc_env("hugetlb", {})["GLIBC_TUNABLES"] == bench.HUGETLB
    with pytest.raises(ValueError, match="expected 'hugetlb' or 'default'"):
        bench.malloc_env("huge", {})


def test_points_cover_both_malloc_settings_and_the_sweep():
    args = argparse.Namespace(config=["c.yaml"], batch=8, seq_len=[128], sweep=[128, 4096], train_max=2048,
                              vocab=256, tile="config", repeats=3, no_train=False, malloc="both")
    pts = bench.points(args)
    assert [(p.malloc, p.seq_len, p.forward, p.train) for p in pts] == [
        ("hugetlb", 128, True, False), ("hugetlb", 128, False, True), ("hugetlb", 4096, True, False),
        ("default", 128, True, False), ("default", 128, False, True), ("default", 4096, True, False)]


def test_growth_exponent_recovers_a_power_law():
    assert bench.growth_exponent([128, 256, 512], [3.0 * n ** 1.5 for n in (128, 256, 512)]) == pytest.approx(1.5)


def test_median_time_runs_at_least_repeats_and_at_least_min_seconds_capped_at_100():
    calls = []

    def fn(cost=0.0):
        calls.append(cost)
        time.sleep(cost)

    bench._median_time(fn, repeats=3, min_seconds=0.0)
    assert len(calls) == 1 + 3  # warm-up + repeats
    calls.clear()
    bench._median_time(lambda: fn(0.01), repeats=3, min_seconds=0.1)
    assert 1 + 3 < len(calls) <= 1 + 11  # more than repeats: ~0.1 s of 10 ms runs
    calls.clear()
    bench._median_time(fn, repeats=3, min_seconds=1e9)
    assert len(calls) == 1 + 100
