"""The pipeline's console: moodloop's lines and errors on the console, the libraries' chatter in
the run's log file (checked in a fresh process, as `moodloop train` and each Airflow task run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from moodloop.core.settings import REPO_ROOT


def test_third_party_warnings_go_to_the_log_file_and_errors_to_the_console(tmp_path: Path):
    log_file = tmp_path / "run.log"
    script = textwrap.dedent(
        f"""
        import logging, warnings
        from pathlib import Path
        from moodloop.core import console
        console.quiet_console()
        warnings.warn("Support for google-cloud-storage < 3.0.0 will be removed", FutureWarning)  # at import
        logging.basicConfig(level=logging.INFO)  # what Beam does: must not add a console handler
        with console.log_to_file(Path({str(log_file)!r})):
            logging.getLogger("tensorflow").warning("SavedModel saved prior to TF 2.5")
            logging.getLogger("absl").info("Component Trainer is running")
            print("moodloop: fitted 5 epochs")
            logging.getLogger("tfx").error("the Trainer failed")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout == "moodloop: fitted 5 epochs\n"
    assert done.stderr == "ERROR tfx: the Trainer failed\n"
    logged = log_file.read_text()
    for line in ("google-cloud-storage", "SavedModel saved prior", "Component Trainer is running", "Trainer failed"):
        assert line in logged
