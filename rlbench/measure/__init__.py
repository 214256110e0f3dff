"""Measurement: memory probes, static bytes of a role, model FLOPs and MFU, evaluation."""
