"""Airflow Assets shared by moodloop's DAGs (orchestration env only: imports Airflow)."""

from __future__ import annotations

from airflow.sdk import Asset

from moodloop.core.settings import Settings

# Updated by ingest_faces whenever a new curated span is written; schedules train_emotion_model.
CURATED_FACES = Asset(name="curated_faces", uri=f"file://{Settings.from_env().curated_dir}")
