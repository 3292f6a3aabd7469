"""The orchestration env (Python 3.11) holds Airflow 3, Evidently 0.7 and GX 1.x, consistent."""

from __future__ import annotations

import subprocess
import sys


def test_pinned_versions_import():
    import airflow
    import evidently
    import great_expectations
    import pandas

    assert airflow.__version__.startswith("3.")
    assert evidently.__version__.startswith("0.7")
    assert great_expectations.__version__.startswith("1.")
    assert int(pandas.__version__.split(".")[0]) < 3  # evidently 0.7 does not import on pandas 3


def test_shared_code_imports_without_tensorflow():
    # Settings, contracts and the readers serve both envs; none may pull TensorFlow in.
    code = (
        "import sys; import moodloop.core.settings, moodloop.core.contracts, data.readers, data.synthetic; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
