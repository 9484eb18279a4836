"""Decoder families (one module each) and what they share (gpt.py)."""
