"""Settings, the model builder and the CLI's surface."""

from __future__ import annotations

import json

import pytest

from components.model import MODEL_SIZES, build_model, class_weights
from moodloop import cli
from moodloop.core.settings import Settings


def test_settings_derive_paths_from_home_and_read_the_environment(own_home, monkeypatch):
    monkeypatch.setenv("MOODLOOP_EPOCHS", "7")
    monkeypatch.setenv("MOODLOOP_BEAM_ARGS", "--runner=FlinkRunner --flink_master=host:8081")
    settings = Settings.from_env(training={"model_size": "tiny"})
    assert settings.curated_dir == own_home / "curated"
    assert settings.model_base == own_home / "models" / "emotion"
    assert settings.training.epochs == 7 and settings.training.model_size == "tiny"
    assert settings.beam_args == ("--runner=FlinkRunner", "--flink_master=host:8081")
    with pytest.raises(TypeError, match="unknown settings"):
        Settings.from_env(epochz=3)


def test_training_settings_reach_the_trainer_whole_with_a_runs_conf_over_them(own_home, monkeypatch):
    from components.pipeline import PipelineConfig, trainer_config
    from components.trainer import training_from

    monkeypatch.setenv("MOODLOOP_WARM_EPOCHS_FRACTION", "0.5")
    settings = Settings.from_env(training={"model_size": "tiny"})
    # a DAG run's conf: a JSON number, text from a form, None for "keep the setting"
    config = PipelineConfig.from_settings(settings, epochs=3, tune="true", learning_rate=None)
    training = training_from(json.loads(json.dumps(trainer_config(config))))  # as the IR carries it
    assert training == settings.training.with_conf(epochs=3, tune=True)
    assert (training.epochs, training.tune, training.model_size) == (3, True, "tiny")
    assert training.warm_epochs_fraction == 0.5 and training.learning_rate == settings.training.learning_rate
    with pytest.raises(TypeError, match="unknown training settings"):
        PipelineConfig.from_settings(settings, epochz=3)


def test_class_weights_favour_rare_classes_and_are_capped():
    weights = class_weights([500, 10, 0, 500, 500, 500, 500])
    assert weights[1] > weights[0] and weights[2] == 0.0
    assert max(weights.values()) <= 10.0


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_model_sizes_build_and_output_seven_probabilities(size):
    model = build_model(size)
    assert model.output_shape == (None, 7)
    assert model.input_shape == (None, 48, 48, 1)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "read", "curate", "train", "settings"):
        assert command in out


def test_generate_then_read_in_both_layouts(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "csv"), "--n", "25", "--seed", "3"]) == 0
    assert cli.main(["generate", str(tmp_path / "png"), "--n", "25", "--seed", "3", "--layout", "folders"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert cli.main(["read", str(tmp_path / "csv")]) == 0
    assert capsys.readouterr().out.startswith("read 25, kept 25, rejected 0")
    assert cli.main(["read", str(tmp_path / "png")]) == 0
    assert capsys.readouterr().out.startswith("read 25, kept 25, rejected 0")


def test_curate_applies_the_ingest_contract_and_keeps_good_rows_only_when_asked(own_home, capfd):
    """`moodloop curate` runs the landing zone's ingest (contract, ledger, quarantine) on the
    user's file, which it copies, never moves."""
    from data.ingest import ledger_records
    from moodloop.core.settings import REPO_ROOT, Settings

    sample = REPO_ROOT / "data" / "samples" / "fer2013_mixed.csv"
    before = sample.read_bytes()
    assert cli.main(["curate", str(sample)]) == 1
    captured = capfd.readouterr()
    assert "`fer2013_mixed.csv:row 5`: expected 2304 pixel values" in captured.out
    assert "breaks the data contract" in captured.err
    quarantined = own_home / "quarantine" / "fer2013_mixed.csv"
    assert (quarantined / "data" / "fer2013_mixed.csv").read_bytes() == before
    assert "QUARANTINED" in (quarantined / "REPORT.md").read_text()

    assert cli.main(["curate", "--keep-good-rows", str(sample)]) == 0
    out = capfd.readouterr().out
    assert "`fer2013_mixed.csv:row 5`: expected 2304 pixel values" in out
    assert "curated span 1 IN PART: 8 faces" in out
    assert sample.read_bytes() == before
    outcomes = [(r["outcome"], r.get("partial")) for r in ledger_records(Settings.from_env())]
    assert outcomes == [("quarantined", None), ("curated", True)]


def test_dag_node_list_matches_the_compiled_pipeline():
    """dags/train_emotion_model.py reads components/pipeline_nodes.json (it must not import TFX);
    regenerate it with `python -m components.node_runner nodes > components/pipeline_nodes.json`."""
    import json

    from components.node_runner import NODES_FILE, _compiled, topology
    from moodloop.core.settings import Settings

    # Every component a run can have (the Tuner only when tuning): tasks a run leaves out succeed at once.
    assert topology(_compiled(Settings.from_env(), {"tune": True})) == json.loads(NODES_FILE.read_text())


def test_a_run_without_the_tuner_skips_its_task_without_importing_tensorflow(own_home):
    """The Tuner's task is on every run's critical path (Trainer waits for it); a run that leaves it
    out must answer at once, not after TensorFlow's import (it took 9 s of each run on the stack)."""
    import subprocess
    import sys

    from components.node_runner import run_dir
    from moodloop.core.settings import REPO_ROOT

    folder = run_dir(Settings.from_env(), "r1")
    folder.mkdir(parents=True)
    (folder / "nodes.json").write_text(json.dumps(["ImportExampleGen", "Trainer"]))
    script = (
        "import sys; from components import node_runner;"
        "code = node_runner.main(['run', '--run-id', 'r1', '--node', 'Tuner']);"
        "print(code, 'tensorflow' in sys.modules, 'tfx' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "nothing to do" in done.stdout
    assert done.stdout.splitlines()[-1] == "0 False False", done.stdout + done.stderr


def test_no_execution_property_holds_a_backslash_that_ml_metadata_cannot_store_on_postgresql():
    """ML Metadata 1.16 escapes string values for PostgreSQL with libpq's PQescapeLiteral and strips
    the quotes it adds; a value with a backslash comes out as ` E'...` and the statement fails (the
    Evaluator's EvalConfig did: a TFMA `config` JSON string inside its JSON). Every component's
    properties, in every run shape, stay free of backslashes (components/evaluation_metrics.py)."""
    from components.node_runner import _compiled
    from moodloop.core.settings import Settings

    for conf in ({}, {"tune": True}):
        for node in _compiled(Settings.from_env(), conf).nodes:
            for name, value in node.pipeline_node.parameters.parameters.items():
                text = value.field_value.string_value
                assert "\\" not in text, f"{node.pipeline_node.node_info.id}.{name}: {text[:200]}"


def test_beam_runs_in_memory_for_small_spans_and_on_every_core_for_large_ones(own_home, monkeypatch):
    from components.pipeline import MULTI_PROCESS_MIN_CORES, beam_args_for
    from data import synthetic
    from data.curated import write_span
    from moodloop.core.settings import IN_MEMORY_BEAM_ARGS, MULTI_PROCESS_BEAM_ARGS

    monkeypatch.setattr("os.cpu_count", lambda: MULTI_PROCESS_MIN_CORES)
    settings = Settings.from_env(beam_multiprocess_faces=50)
    for seed in (1, 2):
        pixels, labels = synthetic.generate_arrays(30, seed=seed)
        write_span(settings.curated_dir, list(pixels), list(labels), source=f"batch-{seed}")
        expected = IN_MEMORY_BEAM_ARGS if seed == 1 else MULTI_PROCESS_BEAM_ARGS  # 30, then 60 faces
        assert beam_args_for(settings) == expected
    assert beam_args_for(Settings.from_env(beam_multiprocess_faces=50, training={"span_window": 1})) == (
        IN_MEMORY_BEAM_ARGS  # the run reads only the newest span
    )
    chosen = ("--runner=FlinkRunner", "--flink_master=host:8081")
    assert beam_args_for(Settings.from_env(beam_args=chosen)) == chosen
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # where worker processes cost more than they give
    assert beam_args_for(settings) == IN_MEMORY_BEAM_ARGS
