"""Measuring artifacts: op census, sizes, agreement with the float model, reports."""
