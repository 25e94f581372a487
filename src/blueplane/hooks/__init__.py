"""Cursor hooks: the hook command (emit.py, standard library only), hooks.json install, and
the spool replay."""
