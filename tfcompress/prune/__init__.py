"""Pruning: magnitude wrappers and schedules."""
