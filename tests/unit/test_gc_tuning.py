"""The server's garbage-collector settings (``server.tune_gc``): start-up objects frozen out
of the collections, young ones collected every ``GC_THRESHOLDS[0]`` allocations."""

from __future__ import annotations

import json
import subprocess
import sys

from blueplane.server import GC_THRESHOLDS


def test_tune_gc_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    # A process of its own: the settings are the whole interpreter's.
    code = (
        "import gc, json; from blueplane.server import tune_gc; import blueplane.cli.run;"
        " before = gc.get_freeze_count(); tune_gc(); x = [[] for _ in range(100)];"
        " print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold(),"
        " gc.is_tracked(x[0]) and gc.get_count()[0] >= 100]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen, thresholds, young = json.loads(out.stdout)
    assert before == 0 and frozen > 10_000  # the modules' objects, frozen
    assert tuple(thresholds) == GC_THRESHOLDS and GC_THRESHOLDS[0] > 700
    assert young  # objects made afterwards are still collected (young generation)
