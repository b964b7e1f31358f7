"""The one error type for bad input data: it always names the file and the problem."""
from __future__ import annotations

ON_BAD_POLICIES = ("error", "skip")  # DATALOADER / TEST.ON_BAD_SAMPLE: stop naming the file | leave it out, logged


class BadSampleError(ValueError):
    """A dataset file (image or annotation) that cannot be used as it is.

    ``path`` is the offending file, ``problem`` a short human sentence, ``kind`` a stable
    machine-readable tag (e.g. ``"corrupt_image"``, ``"unknown_class"``) used in reports.
    """

    def __init__(self, path, problem: str | None = None, kind: str = "bad_sample"):
        if problem is None:  # one argument: torch re-raising a DataLoader worker's error with its message
            self.path, self.problem, self.kind = "", str(path), kind
            super().__init__(str(path))
            return
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{self.path}: {problem}")

    def as_record(self) -> dict:
        return {"file": self.path, "kind": self.kind, "problem": self.problem}
