"""Vision-encoder families (one module each) and what they share (base.py)."""
