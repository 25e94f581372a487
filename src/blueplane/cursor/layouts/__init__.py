"""One module per Cursor layout; ``ALL_LAYOUTS`` is the registry the SchemaDetector walks.

Adding a layout: write its module (``detect``/``fetch``/``extract``, see ``base.Layout``) and a
fixture builder, then list it here. Order matters for the global database: composers and
headers come before bubbles, so a poll learns a composer's workspace before routing its
messages.
"""

from __future__ import annotations

from blueplane.cursor.layouts.agent_kv import AgentKvBlobs
from blueplane.cursor.layouts.base import Layout, LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.chatdata import LegacyChatData
from blueplane.cursor.layouts.composer_data import WorkspaceComposerData
from blueplane.cursor.layouts.composer_headers import ComposerHeadersTable
from blueplane.cursor.layouts.disk_bubbles import GlobalBubbles
from blueplane.cursor.layouts.disk_composers import GlobalComposerData
from blueplane.cursor.layouts.item_generations import ItemTableGenerations
from blueplane.cursor.layouts.item_prompts import ItemTablePrompts
from blueplane.cursor.layouts.v1_table import V1GenerationsTable

ALL_LAYOUTS: tuple[Layout, ...] = (
    ItemTableGenerations(),
    V1GenerationsTable(),
    ItemTablePrompts(),
    WorkspaceComposerData(),
    LegacyChatData(),
    ComposerHeadersTable(),
    GlobalComposerData(),
    GlobalBubbles(),
    AgentKvBlobs(),
)

# Layouts of the global database whose items belong to a composer: re-read per composer
# (``fetch_composers``) when a workspace's session starts.
COMPOSER_SCOPED: tuple[str, ...] = (
    ComposerHeadersTable.name,
    GlobalComposerData.name,
    GlobalBubbles.name,
)

__all__ = [
    "ALL_LAYOUTS",
    "COMPOSER_SCOPED",
    "Layout",
    "LayoutRead",
    "ReadContext",
    "TraceItem",
    "Watermark",
]
