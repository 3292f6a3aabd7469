"""components/energy.py: a block's energy from the kernel's counters read at its start and end."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("codecarbon")  # the pipeline env's; the orchestration env reads "not measured"

from components.energy import measured, power_model

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass"


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))  # native threads too, not only Python's


def test_a_childs_cpu_seconds_are_counted_at_the_cpus_tdp_per_core_and_nothing_polls_meanwhile():
    model = power_model("USA")
    with measured("USA") as idle:
        time.sleep(0.5)
    threads_before = _threads()
    with measured("USA") as busy:
        threads_during = _threads()
        subprocess.run([sys.executable, "-c", BURN.format(seconds=1.0)], check=True)
    assert threads_during == threads_before  # no sampling thread: the counters are read twice, that is all
    if busy.method.startswith("RAPL"):
        pytest.skip("RAPL reads the whole package: the estimate's arithmetic is not what this machine uses")
    # The CPU part of the estimate: the TDP per core for each CPU second (the child's 1 s, waited
    # for, plus its interpreter's start); RAM is charged by time, alike in both blocks.
    ram_per_second = idle.joules / idle.seconds
    cpu_joules = busy.joules - ram_per_second * busy.seconds
    assert cpu_joules == pytest.approx(model.cpu_watts / model.cpus * 1.0, rel=0.5), (idle, busy)
    assert busy.method.startswith("codecarbon estimate: CPU seconds x TDP"), busy.method
    assert busy.co2e_kg > 0 and busy.kwh == pytest.approx(busy.joules / 3.6e6)


def test_a_sleeping_block_costs_its_ram_and_almost_no_cpu():
    model = power_model("USA")
    with measured("USA") as reading:
        time.sleep(1.0)
    if reading.method.startswith("RAPL"):
        pytest.skip("RAPL counts the whole package: another process's work is in this reading")
    import psutil

    ram_watts = model.ram_watts(psutil.Process().memory_info().rss / 1e9)
    # the block's wall time: a sleep never ends early, and may end late on a loaded machine
    assert 0.99 <= reading.seconds < 2.0, reading
    assert reading.joules == pytest.approx(ram_watts * reading.seconds, rel=0.05), reading
