"""Energy of a piece of work: joules, kWh and CO2e, with codecarbon's power models.

Where the machine exposes Intel RAPL counters (`/sys/class/powercap/intel-rapl:N/energy_uj`), the
CPU's energy is read from them before and after the block (the whole package: work running beside
it counts too). Where it does not (containers, AMD without RAPL access, this project's build
machines) it is estimated as codecarbon estimates it: the CPU's TDP per core times the CPU seconds
the block used, and RAM at codecarbon's power per DIMM for the memory in use. CO2e uses the
electricity mix of `MOODLOOP_CARBON_COUNTRY` (codecarbon's offline data). Each reading says which
(`method`), so nobody mistakes an estimate for a measurement.

Why not codecarbon's tracker: in process mode it polls twice a second and each poll walks every
process on the machine (psutil's children(recursive=True) reads /proc/*/stat); measured on a
pipeline run that polling cost 5-15 % of the CPU time of the work it measured, and more where many
processes run (a stack, the test suite). Reading the kernel's own counters at the start and the end
costs nothing in between and is exact: getrusage() counts every thread of this process and every
child it has waited for (a child still running when the block ends is not counted; the pipeline's
children are waited for by their components).

Shared: the pipeline measures each component (components/local_runner.py, node_runner.py), the
model card reports the run's total, the serving benchmark its energy per 1,000 inferences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from moodloop.core.files import atomic_write_text, path_safe

JOULES_PER_KWH = 3.6e6
RAPL_PACKAGES = "/sys/class/powercap/intel-rapl:[0-9]*"  # one per CPU package (sub-zones have a 2nd ':')


@dataclasses.dataclass
class EnergyReading:
    kwh: float = 0.0
    co2e_kg: float = 0.0
    seconds: float = 0.0
    method: str = ""  # "RAPL" or codecarbon's estimate, named

    @property
    def joules(self) -> float:
        return self.kwh * JOULES_PER_KWH

    def summary(self) -> str:
        return f"{self.joules:.0f} J ({self.kwh:.2e} kWh, {self.co2e_kg * 1000:.3f} g CO2e; {self.method})"

    def as_dict(self) -> dict:
        return {
            "joules": self.joules,
            "kwh": self.kwh,
            "co2e_kg": self.co2e_kg,
            "seconds": self.seconds,
            "method": self.method,
        }

    def __add__(self, other: EnergyReading) -> EnergyReading:
        methods = sorted({m for m in (self.method, other.method) if m})
        return EnergyReading(
            self.kwh + other.kwh, self.co2e_kg + other.co2e_kg, self.seconds + other.seconds, " + ".join(methods)
        )


@dataclasses.dataclass(frozen=True)
class PowerModel:
    """codecarbon's models for this machine, looked up once per process (its CPU detection reads
    cpuinfo and its TDP table)."""

    cpu_model: str
    cpu_watts: float  # the whole CPU's TDP
    cpus: int
    ram_watts: Callable[[float], float]  # GB in use -> watts (codecarbon's per-DIMM model)
    co2e_kg: Callable[[float], float]  # kWh -> kg CO2e for the country

    def cpu_joules(self, cpu_seconds: float) -> float:
        """TDP x load integrated over time: the TDP per core for each CPU second used."""
        return self.cpu_watts / self.cpus * cpu_seconds


@functools.lru_cache(maxsize=8)
def power_model(country: str) -> PowerModel:
    """Raises ImportError where codecarbon is not installed (the orchestration env)."""
    from codecarbon.core.cpu import TDP
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.external.ram import RAM
    from codecarbon.input import DataSource

    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # "unknown CPU, using 4 W per thread" etc.
    cpus = os.cpu_count() or 1
    model, tdp = TDP()._main()
    cpu_watts = float(tdp) if tdp else 4.0 * cpus  # codecarbon's DEFAULT_POWER_PER_CORE when it knows nothing
    emissions, geo = Emissions(DataSource()), GeoMetadata(country_iso_code=country)

    def co2e_kg(kwh: float) -> float:
        return float(emissions.get_country_emissions(Energy.from_energy(kWh=kwh), geo))

    return PowerModel(model, cpu_watts, cpus, RAM()._calculate_ram_power, co2e_kg)


def _process_cpu_seconds() -> float:
    """This process's threads and its waited-for children, user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine_cpu_seconds() -> float:
    """Every process's busy time since boot (/proc/stat's first line, idle and iowait left out)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _rapl_microjoules() -> list[tuple[int, int]] | None:
    """(counter, wrap range) per CPU package, or None where RAPL is not readable."""
    readings = []
    for zone in sorted(glob.glob(RAPL_PACKAGES)):
        try:
            readings.append(
                (int(Path(zone, "energy_uj").read_text()), int(Path(zone, "max_energy_range_uj").read_text()))
            )
        except (OSError, ValueError):
            return None
    return readings or None


def _rss_gb(whole_machine: bool) -> float:
    import psutil

    if whole_machine:
        return psutil.virtual_memory().total / 1e9
    return psutil.Process().memory_info().rss / 1e9


@contextlib.contextmanager
def measured(country: str = "USA", whole_machine: bool = False) -> Iterator[EnergyReading]:
    """Measure the block's energy into the yielded reading (filled when the block ends).
    `whole_machine`: every process (a benchmark's client and server); else this process's threads
    and waited-for children (with RAPL, the counters cover the whole CPU package either way)."""
    reading = EnergyReading()
    try:
        model = power_model(country)
    except ImportError:  # the orchestration env has no codecarbon: no reading rather than no run
        reading.method = "not measured (codecarbon is not installed in this environment)"
        yield reading
        return
    except Exception as error:  # noqa: BLE001 - measuring must never stop the work it measures
        reading.method = f"not measured ({type(error).__name__}: {error})"
        yield reading
        return
    cpu_seconds = _machine_cpu_seconds if whole_machine else _process_cpu_seconds
    started, cpu_started, rapl_started = time.monotonic(), cpu_seconds(), _rapl_microjoules()
    try:
        yield reading
    finally:
        try:
            seconds = time.monotonic() - started
            rapl_ended = _rapl_microjoules() if rapl_started else None
            if rapl_started and rapl_ended and len(rapl_ended) == len(rapl_started):
                cpu_joules = sum(
                    ((end - start) % wrap if wrap else end - start) / 1e6
                    for (start, wrap), (end, _) in zip(rapl_started, rapl_ended, strict=True)
                )
                reading.method = "RAPL (the whole CPU package: work running beside it counts too), RAM by size"
            else:
                cpu_joules = model.cpu_joules(cpu_seconds() - cpu_started)
                reading.method = (
                    f"codecarbon estimate: CPU seconds x TDP per core ({model.cpu_model}, {model.cpu_watts:g} W"
                    f" over {model.cpus} cores), RAM by size; no RAPL readable here"
                )
            joules = cpu_joules + model.ram_watts(_rss_gb(whole_machine)) * seconds
            reading.kwh = joules / JOULES_PER_KWH
            reading.co2e_kg = model.co2e_kg(reading.kwh)
            reading.seconds = seconds
        except Exception as error:  # noqa: BLE001 - measuring must never stop the work it measures
            reading.method = f"not measured ({type(error).__name__}: {error})"


def run_folder(pipeline_root: Path | str, run_id: str) -> Path:
    """Where a pipeline run's per-component readings are kept: <pipeline_root>/energy/<run id>/."""
    return Path(pipeline_root) / "energy" / path_safe(run_id)


def record(pipeline_root: Path | str, run_id: str, node: str, reading: EnergyReading) -> Path:
    """Keep one component's reading of a run (both runners do; the model card sums them)."""
    return atomic_write_text(run_folder(pipeline_root, run_id) / f"{node}.json", json.dumps(reading.as_dict()))


def recorded(pipeline_root: Path | str, run_id: str) -> dict[str, EnergyReading]:
    """The readings kept for a run so far, by component."""
    readings = {}
    for path in sorted(run_folder(pipeline_root, run_id).glob("*.json")):
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        readings[path.stem] = EnergyReading(values["kwh"], values["co2e_kg"], values["seconds"], values["method"])
    return readings
