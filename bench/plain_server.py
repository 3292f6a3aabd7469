"""The second baseline of bench/serving_load.py: a plain per-request server of the same SavedModel
(Starlette + uvicorn + the serving_default signature), with none of the gateway's work: no
dynamic batching, no traffic split, no input checks, no inference log, no metrics. What a
tutorial's "serve a Keras model" gives, for comparison.

  python bench/plain_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import base64
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def app_for(model_dir: str):
    import orjson
    import tensorflow as tf
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    predict = tf.saved_model.load(model_dir).signatures["serving_default"]

    async def classify(request: Request) -> Response:
        body = orjson.loads(await request.body())
        images = tf.constant([base64.b64decode(instance["b64"]) for instance in body["instances"]])
        outputs = predict(images=images)
        probabilities = outputs["probabilities"].numpy().tolist()
        classes = [c.decode() for c in outputs["classes"].numpy()]
        predictions = [{"probabilities": p, "classes": c} for p, c in zip(probabilities, classes, strict=True)]
        return Response(orjson.dumps({"predictions": predictions}), media_type="application/json")

    return Starlette(routes=[Route("/v1/models/emotion:predict", classify, methods=["POST"])])


def main() -> int:
    import uvicorn

    model_dir, port = sys.argv[1], int(sys.argv[2])
    print("plain server ready", flush=True)
    uvicorn.run(app_for(model_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
