"""How hard the fuzz suite tries: ``RUNNER_FUZZ_EXAMPLES`` examples per in-process property
(default 100, about 20 s for the whole suite on 2 cores); properties that start a real
``runner`` process get a twentieth of that (at least 3), the precheck's property sixty times that
in documents.

Before a release, run it longer (README.md says so too):

    RUNNER_FUZZ_EXAMPLES=5000 python -m pytest tests/fuzz --timeout 0
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis caches Unicode tables in its home directory (./.hypothesis by default): one per
# test process, outside the checkout, so two pytest-xdist workers never write the same file.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / f"runner-hypothesis-{os.getpid()}"))

EXAMPLES = int(os.environ.get("RUNNER_FUZZ_EXAMPLES", "100"))


def fuzz(*, processes: bool = False) -> settings:
    """Hypothesis settings for one property; ``processes`` if each example starts ``runner``."""
    return settings(
        max_examples=max(3, EXAMPLES // 20) if processes else EXAMPLES,
        deadline=None,  # the machine is shared; timing is not the property
        database=None,  # no example database: each run starts afresh
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
