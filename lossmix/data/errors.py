"""The one error type for bad input data: it always names the file and the problem."""


class BadSampleError(ValueError):
    """A dataset file (image or annotation) that cannot be used as it is.

    ``path`` is the offending file, ``problem`` a short human sentence, ``kind`` a stable
    machine-readable tag (e.g. ``"corrupt_image"``, ``"unknown_class"``) used in reports.
    """

    def __init__(self, path, problem: str, kind: str = "bad_sample"):
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{self.path}: {problem}")

    def as_record(self) -> dict:
        return {"file": self.path, "kind": self.kind, "problem": self.problem}
