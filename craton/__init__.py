"""Craton: a compliance-first, hash-chained, VSR-replicated log store.

Layers (imports flow one way): ``craton.core`` (pure) <- ``craton.io`` <- ``craton.sim``
and ``craton.core`` <- ``craton.io`` <- ``craton.net``. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
