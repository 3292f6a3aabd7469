"""Energy of a piece of work, measured with codecarbon: joules, kWh and CO2e.

codecarbon reads Intel RAPL counters where the machine exposes them (`/sys/class/powercap`);
where it cannot (containers, AMD without RAPL access, this project's build machines) it estimates:
the CPU's power from its TDP times the process's CPU load, and RAM at a fixed power per GB. Each
reading says which (`method`), so nobody mistakes an estimate for a measurement. CO2e uses the
electricity mix of `MOODLOOP_CARBON_COUNTRY` (codecarbon's offline data).

Shared: the pipeline measures each component (components/local_runner.py, node_runner.py), the
model card reports the run's total, the serving benchmark its energy per 1,000 inferences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from moodloop.files import atomic_write_text, path_safe

JOULES_PER_KWH = 3.6e6


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


def _method(tracker) -> str:
    modes = {type(h).__name__: getattr(h, "_mode", None) for h in getattr(tracker, "_hardware", [])}
    cpu = modes.get("CPU")
    if cpu == "intel_rapl":
        return "RAPL (the whole CPU package: work running beside it counts too)"
    return f"codecarbon estimate: CPU {cpu or 'constant'} (TDP x load), RAM by size; no RAPL readable here"


@contextlib.contextmanager
def measured(country: str = "USA", whole_machine: bool = False) -> Iterator[EnergyReading]:
    """Measure the block's energy into the yielded reading (filled when the block ends).
    `whole_machine`: every process (a benchmark's client and server); else this process's share
    of the estimate (with RAPL, the counters cover the whole CPU package either way)."""
    reading = EnergyReading()
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:  # the orchestration env has no codecarbon: no reading rather than no run
        reading.method = "not measured (codecarbon is not installed in this environment)"
        yield reading
        return
    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its INFO lines are per-second chatter
    try:
        tracker = OfflineEmissionsTracker(
            country_iso_code=country,
            measure_power_secs=1,
            log_level="error",
            save_to_file=False,
            tracking_mode="machine" if whole_machine else "process",
            allow_multiple_runs=True,
        )
        tracker.start()
    except Exception as error:  # noqa: BLE001 - measuring must never stop the work it measures
        reading.method = f"not measured ({type(error).__name__}: {error})"
        yield reading
        return
    try:
        yield reading
    finally:
        try:
            emissions = tracker.stop() or 0.0
            data = tracker.final_emissions_data
            reading.kwh = float(getattr(data, "energy_consumed", 0.0) or 0.0)
            reading.co2e_kg = float(emissions)
            reading.seconds = float(getattr(data, "duration", 0.0) or 0.0)
            reading.method = _method(tracker)
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
