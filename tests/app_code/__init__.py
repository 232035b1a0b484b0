"""Stands in for user code: functions that issue queries, deep in a call chain."""
