"""Hyperparameter search for the Trainer: TFX's Tuner component with KerasTuner's random-search
oracle over the learning rate, the layers' width and the dense dropout (MOODLOOP_TUNE=1).

KerasTuner's `Tuner` only accepts Keras 3 models, and TFX 1.16 trains tf_keras (Keras 2) models,
so the trial loop is ours (a `BaseTuner` whose `run_trial` builds, fits and scores one model);
the oracle, the search space and TFX's `best_hyperparameters` artifact are KerasTuner's.
Trials are scored on the last fifth of the training split, never on the held-out faces that the
Evaluator and the A/B gate judge the final model on.
"""

from __future__ import annotations

import logging

import keras_tuner
import numpy as np
from keras_tuner.src.engine.base_tuner import BaseTuner

from components.model import build_model, class_weights
from moodloop.core.contracts import NUM_CLASSES
from moodloop.core.settings import TrainingSettings

log = logging.getLogger(__name__)

OBJECTIVE = "val_sparse_categorical_accuracy"
TUNED = ("learning_rate", "width", "dropout")  # what build_model takes from a trial


def search_space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [3e-4, 1e-3, 3e-3])
    hp.Choice("width", [0.5, 1.0, 1.5])
    hp.Float("dropout", 0.2, 0.5, step=0.1)
    return hp


class FaceTuner(BaseTuner):
    def __init__(self, model_size: str, augment: bool, epochs: int, batch_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_size, self.augment, self.epochs, self.batch_size = model_size, augment, epochs, batch_size

    def run_trial(self, trial, x: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray]):
        values = {name: trial.hyperparameters.get(name) for name in TUNED}
        model = build_model(self.model_size, augment=self.augment, **values)
        history = model.fit(
            x,
            y,
            validation_data=validation_data,
            epochs=self.epochs,
            batch_size=self.batch_size,
            class_weight=class_weights(np.bincount(y, minlength=NUM_CLASSES)[:NUM_CLASSES].tolist()),
            verbose=0,
        )
        best = max(history.history[OBJECTIVE])
        log.info(f"tuner trial {trial.trial_id}: {_describe(values)} -> validation accuracy {best:.3f}")
        return {OBJECTIVE: best}

    def save_model(self, trial_id, model, step=0) -> None:
        """Nothing to keep: the Trainer retrains with the best hyperparameters."""

    def load_model(self, trial):
        raise NotImplementedError("trial models are not kept; train with the best hyperparameters")


def _describe(values: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in values.items())


def make_tuner(
    x: np.ndarray, y: np.ndarray, training: TrainingSettings, directory: str
) -> tuple[FaceTuner, dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]]]:
    """The tuner and its search arguments: trials fit on the first four fifths of the training
    split and are scored on the last fifth."""
    cut = int(0.8 * len(y))
    tuner = FaceTuner(
        model_size=training.model_size,
        augment=training.augment,
        epochs=training.tune_epochs,
        batch_size=training.batch_size,
        oracle=keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective(OBJECTIVE, "max"),
            max_trials=training.tune_trials,
            hyperparameters=search_space(),
            seed=training.seed,
        ),
        directory=directory,
        project_name="moodloop_tuner",
        overwrite=True,
    )
    return tuner, {"x": x[:cut], "y": y[:cut], "validation_data": (x[cut:], y[cut:])}


def best_values(hyperparameters_config: dict | None) -> dict[str, float]:
    """The tuned values for build_model from the Tuner's best_hyperparameters (empty: not tuned)."""
    if not hyperparameters_config:
        return {}
    hp = keras_tuner.HyperParameters.from_config(hyperparameters_config)
    return {name: hp.get(name) for name in TUNED if name in hp.values}
