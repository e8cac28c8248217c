"""Samples for a trainer: prepared datasets packed and scheduled, mixtures, streams, exports."""
