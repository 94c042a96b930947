"""Measurement: the memory census, workloads, Tables 1-2, the planner, the SGD claims."""
