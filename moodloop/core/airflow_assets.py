"""Airflow Assets shared by moodloop's DAGs (orchestration env only: imports Airflow)."""

from __future__ import annotations

from airflow.sdk import Asset

from moodloop.core.settings import Settings

# Updated by ingest_faces whenever a new curated span is written; schedules train_emotion_model.
CURATED_FACES = Asset(name="curated_faces", uri=f"file://{Settings.from_env().curated_dir}")
# Updated by train_emotion_model's Pusher task each time it ends (a canary pushed, or none when the
# gate refused); schedules canary_analysis at once, beside its period, so a canary's first step
# starts when it is pushed, not up to a period later.
PUSHED_MODELS = Asset(name="pushed_models", uri=f"file://{Settings.from_env().model_base}")
