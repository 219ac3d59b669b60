"""Task callables of the example project.

runner imports every module in this package at start, so ``@task`` registrations exist before
a task file names them. Keep module-level code cheap: ``runner validate`` imports it too.
"""
