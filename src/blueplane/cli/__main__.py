"""``python -m blueplane.cli``: the same as the ``blueplane`` command."""

from blueplane.cli import app

app()
