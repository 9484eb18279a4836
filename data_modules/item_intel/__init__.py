"""Multi-image item intelligence: the answer schema and the data pipeline that produces labels for it."""
