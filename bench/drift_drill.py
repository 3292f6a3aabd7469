"""The drift drill: does the loop notice a shift in live traffic and heal the model by itself?

1. Train on clean SYNTHETIC faces; serve the model with the gateway (embedded backend).
2. Send clean traffic for some windows (with feedback labels); the drift job judges each window.
3. Shift the traffic (darker, blurrier, smaller faces: the generator's knobs) while a labelled
   batch from the shifted distribution lands; the drift job flags the shift and triggers the
   retrain itself (here the pipeline run stands in for Airflow's train_emotion_model run: the
   trigger is the same function, no person in between).
4. The retrained model is pushed as canary; the drill measures it on shifted faces.

Prints: windows until drift is flagged, false alarms over the clean windows, accuracy on clean
faces before the shift, on shifted faces before the retrain and after it (ratio to the clean
accuracy: the goal is >= 0.95), and the time from the shift to the new model serving.

  .venv/orchestration/bin/python bench/drift_drill.py                 # the full drill
  .venv/orchestration/bin/python bench/drift_drill.py --clean-windows 3 --faces 2000   # smaller

Runs in the orchestration env (Evidently, GX); training and serving run in the pipeline env.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from data import landing, synthetic  # noqa: E402
from monitoring import drift  # noqa: E402
from moodloop.contracts import EMOTIONS  # noqa: E402
from moodloop.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHIFT = synthetic.Shift(brightness=-0.25, blur=1.0, face_scale=0.8)
# The 2-core default model ("small"), without augmentation: the tiny test model underfits a
# mixed clean + shifted set, and the A/B gate then (rightly) refuses the retrained candidate.
TRAINING = {
    "MOODLOOP_EPOCHS": "15", "MOODLOOP_MODEL_SIZE": "small", "MOODLOOP_AUGMENT": "0",
    "MOODLOOP_LEARNING_RATE": "0.002", "MOODLOOP_MIN_ACCURACY": "0.40",
}  # fmt: skip


class Drill:
    def __init__(self, home: Path, args: argparse.Namespace) -> None:
        from moodloop.s3server import free_port

        self.args = args
        self.env = {
            **os.environ, **TRAINING, "MOODLOOP_HOME": str(home), "MOODLOOP_LOG_FLUSH_SECONDS": "1",
            "MOODLOOP_REST_PORT": str(free_port()), "MOODLOOP_GRPC_PORT": str(free_port()),
        }  # fmt: skip
        self.settings = Settings.from_env(
            home=home, drift_window_records=args.window, rest_port=int(self.env["MOODLOOP_REST_PORT"])
        )
        self.moodloop = str(self.settings.pipeline_python.with_name("moodloop"))
        self.rest = f"http://127.0.0.1:{self.env['MOODLOOP_REST_PORT']}"
        self.gateway: subprocess.Popen | None = None
        self.retrained_at: float | None = None

    def run(self, *command: str) -> str:
        done = subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True)
        if done.returncode not in (0, 3):
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def batch(self, name: str, n: int, seed: int, shift: synthetic.Shift | None) -> Path:
        pixels, labels = synthetic.generate_arrays(n, seed=seed, shift=shift or synthetic.Shift())
        path = self.settings.home / "drill" / name / "fer2013.csv"
        landing.write_fer2013_csv(zip(pixels, labels, strict=True), path)
        return path

    def start_gateway(self) -> None:
        log = open(self.settings.home / "gateway.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.gateway = subprocess.Popen(
            [str(self.settings.pipeline_python), "-m", "serving.gateway"], env=self.env, cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait_until(lambda: self.call("GET", "/healthz").get("ready"), 120, "the gateway")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.rest + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read()) | {"_request_id": response.headers.get("x-request-id")}
        except urllib.error.HTTPError as error:
            return json.loads(error.read()) | {"_status": error.code}

    @staticmethod
    def wait_until(check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := check():
                    return result
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} not ready after {timeout:.0f} s")

    def traffic(self, seed: int, shift: synthetic.Shift | None, label: str = "", feedback: bool = True) -> float:
        """One window of live requests (25 faces each) with feedback labels; returns the accuracy."""
        pixels, labels = synthetic.generate_arrays(self.args.window, seed=seed, shift=shift or synthetic.Shift())
        path = f"/v1/models/emotion/labels/{label}:predict" if label else "/v1/models/emotion:predict"
        right = 0
        for start in range(0, len(pixels), 25):
            chunk = slice(start, start + 25)
            answer = self.call(
                "POST", path, {"signature_name": "serving_pixels", "inputs": {"pixels": pixels[chunk].tolist()}}
            )
            predicted = np.array(answer["outputs"]["class_ids"])
            right += int((predicted == labels[chunk]).sum())
            if feedback:
                for i, truth in enumerate(labels[chunk]):
                    self.call(
                        "POST",
                        "/v1/feedback",
                        {"request_id": answer["_request_id"], "instance": i, "label": EMOTIONS[truth]},
                    )
        time.sleep(2.5)  # the inference log's flush
        return right / len(pixels)

    def retrain(self, settings: Settings, conf: dict) -> dict:
        """What the drift job calls: here the pipeline itself instead of the Airflow DAG run."""
        self.retrained_at = time.monotonic()
        out = self.run(self.moodloop, "train")
        pushed = re.search(r"pushed version (\d+)", out)
        lines = [line.strip() for line in out.splitlines() if line.startswith(("A/B gate:", "  - "))]
        verdict = list(dict.fromkeys(lines))
        return {"pushed_version": int(pushed[1]) if pushed else None, "gate": verdict, "conf": conf}

    def stop(self) -> None:
        if self.gateway:
            self.gateway.terminate()
            self.gateway.wait(timeout=30)


def drill(args: argparse.Namespace, home: Path) -> dict:
    d = Drill(home, args)
    figures: dict = {"clean_windows": args.clean_windows}
    print(f"1. training on {args.faces} clean SYNTHETIC faces ...", flush=True)
    d.run(d.moodloop, "train", "--data", str(d.batch("clean", args.faces, seed=0, shift=None)))
    d.start_gateway()
    try:
        print(f"2. {args.clean_windows} clean windows of {args.window} requests", flush=True)
        outcomes, clean_accuracy = [], []
        for w in range(args.clean_windows):
            clean_accuracy.append(d.traffic(seed=1000 + w, shift=None))
            outcomes.append(drift.run_window(d.settings, retrain=d.retrain).outcome)
            print(f"   clean window {w + 1}: {outcomes[-1]}, accuracy {clean_accuracy[-1]:.3f}", flush=True)
        figures["false_alarms"] = sum(o == "drift" for o in outcomes)
        figures["clean_accuracy"] = float(np.mean(clean_accuracy))

        print("3. the shift: darker, blurrier, smaller faces; a shifted labelled batch lands", flush=True)
        shifted_at = time.monotonic()
        d.run(d.moodloop, "curate", str(d.batch("shifted", args.faces, seed=1, shift=SHIFT)))
        figures["windows_to_flag"], before = None, []
        for w in range(args.shift_windows):
            before.append(d.traffic(seed=2000 + w, shift=SHIFT))
            result = drift.run_window(d.settings, retrain=d.retrain)
            print(f"   shifted window {w + 1}: {result.outcome}, accuracy {before[-1]:.3f}", flush=True)
            if result.outcome == "drift":
                figures["windows_to_flag"] = w + 1
                figures["retrain"] = result.retrain
                break
        figures["shifted_accuracy_before"] = float(np.mean(before))
        version = (figures.get("retrain") or {}).get("pushed_version")
        if version:
            d.wait_until(
                lambda: d.call("GET", f"/v1/models/emotion/versions/{version}").get("model_version_status"), 120, "v"
            )
            figures["seconds_shift_to_new_model_serving"] = round(time.monotonic() - shifted_at, 1)
            label = "canary" if "canary" in d.call("GET", "/healthz")["labels"] else "stable"
            figures["shifted_accuracy_after"] = d.traffic(seed=3000, shift=SHIFT, label=label, feedback=False)
            figures["after_over_clean"] = figures["shifted_accuracy_after"] / figures["clean_accuracy"]
    finally:
        d.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=4000, help="faces per labelled batch (clean, shifted)")
    parser.add_argument("--window", type=int, default=200, help="requests per window")
    parser.add_argument("--clean-windows", type=int, default=20)
    parser.add_argument("--shift-windows", type=int, default=4, help="shifted windows at most before giving up")
    parser.add_argument("--home", type=Path, help="work folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="moodloop-drill-"))
    figures = drill(args, home)
    print("\n== drift drill (SYNTHETIC faces) ==")
    print(json.dumps(figures, indent=1, default=str))
    flagged = figures["windows_to_flag"] is not None and figures["windows_to_flag"] <= 2
    print(
        f"goals: flagged within 2 windows: {flagged}; "
        f"no false alarm in {args.clean_windows} clean windows: {figures['false_alarms'] == 0}; "
        f"after/clean accuracy >= 0.95: {figures.get('after_over_clean', 0) >= 0.95}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
