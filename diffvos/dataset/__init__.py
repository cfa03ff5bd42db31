"""``diffvos track-dataset``: every video of a DAVIS-, YouTube-VOS- or MOSE-layout root, in
process or on a Ray cluster, one task per video, resumable.

* :mod:`diffvos.dataset.layout`: detect the layout, list the videos and their annotations.
* :mod:`diffvos.dataset.store`: per-video atomic outputs and completion markers (resume).
* :mod:`diffvos.dataset.track`: one video through one session (objects added at first appearance).
* :mod:`diffvos.dataset.pool`: the Ray actor pool (driver-side scheduling, retries).
* :mod:`diffvos.dataset.run`: the command: in process or on Ray, progress and summary.
"""
