"""Keeping the garbage collector's pauses short in a server that drives many rollouts.

Why: a full (generation 2) collection walks every tracked object while holding the GIL, and with 1,000 rollouts
in one process that was 0.2-0.3 s every few seconds during which no controller, request or thread ran: the whole
of the scheduling lag's p99 (bench/bench_server_scale.py prints the pauses). Objects that live about a second (a
rollout's state between two analyses) outlived the default young-generation threshold (700 allocations, about 30
collections a second) and were promoted, so the old generation grew by a quarter, and was walked whole, every few
seconds. Two standard remedies (CPython's ``gc`` documentation; Instagram's "dismissing the garbage collector"):

- ``gc.freeze()`` once the server has started: what the imports and the app made (modules, classes, pydantic's
  validators) moves to a permanent generation that collections skip. It is never freed, which is right for
  objects that live as long as the process.
- a young-generation threshold of ``YOUNG`` allocations, so a young collection runs about once a second rather
  than thirty times, and an object that lives a second mostly dies young instead of being promoted. Measured at
  1,000 rollouts: 3,000 and 5,000 promoted enough to bring full collections back; 20,000 and 50,000 made each
  young collection long enough (50-75 ms) to show in the API's latency.

Reference cycles are still collected; memory use is unchanged in the bench.
"""

from __future__ import annotations

import gc

YOUNG = 10_000


def shorten_gc_pauses() -> None:
    """Freeze what exists now and raise the young generation's threshold to ``YOUNG``."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
