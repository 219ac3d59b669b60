"""Executors: the code that runs one attempt of a task (a shell command, a python callable)."""
