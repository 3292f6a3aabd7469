"""A task for tests/code/test_warm_python.py, run as `python -m tests.code.warm_target WHAT ...`:
`echo CODE` prints what it sees and exits with CODE; `sleep PIDFILE` writes its pid and sleeps;
`tf` runs TensorFlow ops (in a process forked from one that imported TensorFlow); `raise` raises."""

from __future__ import annotations

import json
import os
import sys
import time

what = sys.argv[1]
if what == "echo":
    seen = {"argv": sys.argv[1:], "value": os.environ.get("WARM_TARGET_VALUE"), "cwd": os.getcwd()}
    print(json.dumps({**seen, "parent": os.getppid()}))
    print("a line on stderr", file=sys.stderr)
    sys.exit(int(sys.argv[2]))
if what == "sleep":
    with open(sys.argv[2], "w") as pid_file:
        pid_file.write(str(os.getpid()))
    time.sleep(300)
if what == "tf":
    import tensorflow as tf

    ones = tf.ones([256, 256])
    print(json.dumps({"sum": float(tf.reduce_sum(tf.matmul(ones, ones))), "parent": os.getppid()}))
if what == "raise":
    raise RuntimeError("the task failed")
