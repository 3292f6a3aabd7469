"""The contracts between stages, written down once. A stage talks to the next only through one
of these; each has one writer and one reader module, named here.

- The landing-batch contract (data arrives): a folder of images, an image-folder tree or a
  FER2013 CSV, complete when READY_MARKER is in it. Read by data/readers.py, checked by
  data/landing_contract.py. The gateway delivers corrected faces as such batches
  (serving/landing_batches.py).
- The curated-dataset contract (data -> training): TFRecord spans ExampleGen reads. Written by
  data/curated.py.
- The model contract (training -> serving and monitoring): a SavedModel version with the four
  signatures below and its reference profile; which version serves as `stable` or `canary` is
  the rollout contract (moodloop/core/rollout.py, over TF Serving's models.config).
- The inference-log contract (serving -> monitoring): Parquet records by hour, written by
  serving/inference_log.py from moodloop/core/log_records.py's rows, read by moodloop/core/log_records.py.
- The serving-metrics contract (serving -> the canary analysis): the gateway's Prometheus names.
- The status contract (training and monitoring -> the faces page's model panel): the latest A/B
  gate and drift verdicts (moodloop/core/status.py).
- The retrain-trigger contract (monitoring -> training): an Airflow REST API v2 run of the
  training DAG with a conf naming the reason (moodloop/core/airflow_api.py), or the curated-faces
  asset event (moodloop/core/airflow_assets.py).
"""

from __future__ import annotations

# FER2013 label order: the integer in the `emotion` column is the index here.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
FACE_SIZE = 48  # faces are FACE_SIZE x FACE_SIZE grayscale

# FER2013 class counts (all 35,887 faces): the default class mix of the synthetic generator.
FER2013_CLASS_COUNTS: dict[str, int] = {
    "angry": 4953,
    "disgust": 547,
    "fear": 5121,
    "happy": 8989,
    "sad": 6077,
    "surprise": 4002,
    "neutral": 6198,
}

# The rollout contract: the version labels of models.config (TF Serving's version_labels) that say
# which version users get (`stable`) and which is on trial (`canary`); the inference log records them.
STABLE = "stable"
CANARY = "canary"

# The landing-batch contract: a batch is complete when this empty marker file is in it (or when
# nothing in it changed for a while); it is never read as data.
READY_MARKER = "_SUCCESS"
# A batch of generated faces (data/synthetic.py) says so with this file beside its data; the readers
# skip it, the curated manifest records it ("synthetic": true) and the model card says it plainly.
SYNTHETIC_MARKER = "SYNTHETIC.md"
# Corrected faces from the faces page land as batches named so (serving/corrections.py).
CORRECTIONS_BATCH_PREFIX = "corrections-"
# Live faces labelled from the labelling queue (the faces page's Label tab) land as batches named so.
LABELLED_BATCH_PREFIX = "labelled-"
# The labelling queue's contract: <labelling_dir>/queue.json (the chosen faces, in the order to ask
# them, with why each was chosen) and <labelling_dir>/faces/<face id>.png. The drift job writes it;
# the gateway serves it to the Label tab and takes the answers.
LABELLING_QUEUE = "queue.json"
LABELLING_FACES = "faces"
# Every answer, one JSON line each ({"face_id", "answer", ...}): the gateway appends, the queue and
# the Trainer's self-training read which faces were answered (moodloop/core/labelling_journal.py)
LABELLING_ANSWERS = "answers.jsonl"
LABEL_NOT_A_FACE, LABEL_SKIP = "not_a_face", "skip"
# Where each curated face came from, as a slice `source=<value>` the A/B gate guards like any slice:
# generated faces, a team's labelled batch, corrections of served answers, or live faces labelled on
# the loop's request (the labelling queue's batches). The last three are real. After a drift the
# gate also judges on kept live faces with a feedback label (never curated: they only judge).
SOURCE_ATTRIBUTE = "source"
SOURCE_SYNTHETIC, SOURCE_BATCH, SOURCE_CORRECTIONS = "synthetic", "batch", "corrections"
SOURCE_LABELLED, SOURCE_FEEDBACK = "labelled", "feedback"
REAL_SOURCES = (SOURCE_BATCH, SOURCE_CORRECTIONS, SOURCE_LABELLED, SOURCE_FEEDBACK)

# The curated-dataset contract: gzipped TFRecord files of tf.Example under
# <curated>/span-<N>/, one span per accepted landing batch.
CURATED_SPAN_PREFIX = "span-"
CURATED_SPAN_PATTERN = CURATED_SPAN_PREFIX + "{SPAN:5}/*.tfrecord.gz"  # span-00001/
CURATED_MANIFEST = "manifest.json"
FEATURE_IMAGE = "image"  # bytes: PNG-encoded face (any size; the model resizes to 48x48)
FEATURE_LABEL = "label"  # int64: index into EMOTIONS
# bytes list: the face's slices as "attribute=value" (moodloop/core/slices.py): image-property buckets
# computed at ingest, the generator's nuisance attributes, a landing batch's extra columns. One
# multivalent feature, so a batch may bring any column without a schema change; TFMA makes one
# slice per value.
FEATURE_SLICES = "slice"

# The model contract: SavedModel signatures.
SIGNATURE_IMAGES = "serving_default"  # input "images": [N] encoded JPEG/PNG bytes
SIGNATURE_PIXELS = "serving_pixels"  # input "pixels": [N, 48, 48] uint8
SIGNATURE_EXAMPLES = "serving_examples"  # input "examples": [N] serialized tf.Example (TFMA)
SIGNATURE_EXPLAIN = "serving_explain"  # input "pixels": [N, 48, 48] uint8 -> heatmap, class_ids
OUTPUT_PROBABILITIES = "probabilities"  # [N, 7] float32
OUTPUT_CLASS_IDS = "class_ids"  # [N] int64
OUTPUT_CLASSES = "classes"  # [N] string, the emotion name
OUTPUT_HEATMAP = "heatmap"  # [N, 48, 48] float32 in 0..1: where the evidence for class_ids lies
OUTPUT_EMBEDDING = "embedding"  # [N, EMBEDDING_DIMS] float32: penultimate layer, PCA-reduced at training
EMBEDDING_DIMS = 8
# What the inference log needs to know about each image, computed in the graph (serving_default and
# serving_pixels), so neither the gateway nor a TF Serving client decodes an image in Python:
# output name -> the log column (moodloop/core/image_properties.py defines them; the graph mirrors it).
OUTPUT_IMAGE_PROPERTIES = {
    "image_brightness": "brightness",  # [N] float32
    "image_contrast": "contrast",  # [N] float32
    "image_sharpness": "sharpness",  # [N] float32
    "image_width": "width",  # [N] int32, of the image as sent
    "image_height": "height",  # [N] int32
}
EDGE_DIR = "assets.extra/edge"  # in each pushed version: TFLite files that passed their parity gate ...
EDGE_METADATA = "edge.json"  # ... and what they are: files, sha256, labels, input and output spec, parity, latency
MODEL_CARD_HTML = "assets.extra/model_card.html"  # in each pushed version: its model card for people ...
MODEL_CARD_JSON = "assets.extra/model_card.json"  # ... and for machines (components/model_card.py)
# In a version `moodloop adopt` made: what was adopted (file, format, preprocessing, class order),
# so the gate knows the champion is a team's own model; and, for a Keras model, the model itself
# (ADOPTED_KERAS_DIR/<its file>), which a retrain can fine-tune (MOODLOOP_TRAIN_FROM).
ADOPTED_RECORD = "assets.extra/adopted.json"
ADOPTED_KERAS_DIR = "assets.extra/adopted"
REFERENCE_PROFILE = "assets.extra/reference_profile.parquet"  # in each pushed version: its eval faces as
# inference-log rows (contract 4 columns), the reference the drift jobs compare live traffic with
ACCURACY_ESTIMATOR = "assets.extra/accuracy_estimator.json"  # in each pushed version: how to estimate its
# accuracy without labels (moodloop/core/accuracy_estimate.py LearnedEstimator), fitted on its held-out faces


def emotion_index(name_or_index: str | int) -> int:
    """Map an emotion name or FER2013 code ("3", 3, "happy", "Happy") to its index.

    Raises ValueError with the accepted values when it is neither.
    """
    text = str(name_or_index).strip().lower()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < NUM_CLASSES:
            return index
    elif text in EMOTIONS:
        return EMOTIONS.index(text)
    raise ValueError(
        f"label {name_or_index!r} is not an emotion: expected 0..{NUM_CLASSES - 1} or one of {', '.join(EMOTIONS)}"
    )


# The inference-log contract: one record per classified image, Parquet files partitioned by hour
# under <inference_log_url>/predictions/date=YYYY-MM-DD/hour=HH/ (feedback labels under feedback/).
# Probabilities are flat columns (prob_<emotion>) so Evidently reads them as plain numbers.
LOG_PREDICTIONS = "predictions"
LOG_FEEDBACK = "feedback"
# The `api` of a face the faces page analysed (photos, and webcam frames): feedback on a photo's face
# is a correction, which becomes training data (serving/corrections.py); on a predict call it is not.
API_FACES_PAGE = "faces"
# The live-face sample (opt-in, MOODLOOP_KEEP_LIVE_FACES): the face each prediction saw, as a 48x48
# grey PNG, with its probabilities and embedding, under faces/ in the same hour partitions. The
# labelling queue (monitoring/labelling.py) chooses from it; a retrain reads it back
# (components/live_faces.py: self-training, the A/B gate's feedback-labelled faces, fine-tuning's anchors).
LOG_FACES = "faces"
LOG_IMAGE_PROPERTIES: tuple[str, ...] = (
    "brightness",  # mean grey level, 0..1
    "contrast",  # standard deviation of grey levels, 0..1
    "sharpness",  # variance of the Laplacian of the 48x48 face (grey levels 0..255)
    "width",  # the input image as sent, in pixels
    "height",
    "face_width",  # the detected face in the original photo (face analysis only; else null)
    "face_area_ratio",  # face box area / photo area (face analysis only; else null)
)
LOG_PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"prob_{e}" for e in EMOTIONS)
LOG_EMBEDDING_COLUMNS: tuple[str, ...] = tuple(f"emb_{i}" for i in range(EMBEDDING_DIMS))

# The serving-metrics contract: the gateway's Prometheus counters the canary analysis reads
# (prometheus_client adds "_total" to a counter's samples).
METRIC_REQUESTS = "moodloop_requests"  # labels: api, model, version, label, code (TF Serving's status name)
METRIC_REQUEST_LATENCY = "moodloop_request_latency_seconds"
METRIC_ERRORS = "moodloop_errors"
