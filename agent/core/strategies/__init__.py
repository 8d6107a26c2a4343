"""Strategies behind one ask/tell interface (see base.py)."""
