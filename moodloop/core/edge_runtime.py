"""Running an edge model: a TFLite file of the model contract (EDGE_DIR) on the LiteRT interpreter,
one face at a time as a device does. Used where the files are checked (components/edge.py) and
where they run (serving/live.py, `moodloop live --tflite`)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from moodloop.core.contracts import EMOTIONS


class EdgeModel:
    """A TFLite file run by the LiteRT interpreter, one face at a time as a device does: faces
    [N, 48, 48] uint8 -> probabilities [N, 7]. Quantized inputs and outputs are (de)quantized
    with the file's own scale and zero point."""

    def __init__(self, flatbuffer: bytes, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def spec(self) -> dict:
        def described(detail: dict) -> dict:
            scale, zero_point = detail["quantization"]
            return {
                "name": detail["name"],
                "shape": [int(v) for v in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "scale": float(scale),
                "zero_point": int(zero_point),
            }

        return {"input": described(self.input), "output": described(self.output)}

    def _one(self, face: np.ndarray) -> np.ndarray:
        x = face.astype(np.float32)[np.newaxis, ..., np.newaxis]
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            x = np.clip(np.round(x / scale + zero_point), 0, 255) if scale else x
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale if self.output["dtype"] != np.float32 else y

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        return np.stack([self._one(face) for face in faces]) if len(faces) else np.zeros((0, len(EMOTIONS)))

    def latency_ms(self, faces: np.ndarray, repeats: int = 200) -> float:
        """Median milliseconds per face (batch 1, one thread), after a warm-up."""
        self._one(faces[0])
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            self._one(faces[i % len(faces)])
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
