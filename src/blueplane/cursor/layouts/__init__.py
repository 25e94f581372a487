"""One module per Cursor layout; ``ALL_LAYOUTS`` is the registry the SchemaDetector walks.

Adding a layout: write its module (``detect``/``fetch``/``extract``, see ``base.Layout``) and a
fixture builder, then list it here.
"""

from __future__ import annotations

from blueplane.cursor.layouts.base import Layout, LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.item_generations import ItemTableGenerations
from blueplane.cursor.layouts.v1_table import V1GenerationsTable

ALL_LAYOUTS: tuple[Layout, ...] = (
    ItemTableGenerations(),
    V1GenerationsTable(),
)

__all__ = ["ALL_LAYOUTS", "Layout", "LayoutRead", "ReadContext", "TraceItem", "Watermark"]
