"""Out-of-memory errors that PyTorch code catches; their text is the pool's report.

``OutOfMemoryError`` is a ``CoalesceError``; once torch is imported it is also a
``torch.cuda.OutOfMemoryError`` (``except torch.cuda.OutOfMemoryError`` catches it), built
lazily so importing coalesce_torch never imports torch.
"""

import sys


_classes = {}


def error_class(base):
    """The OutOfMemoryError class for ``base`` (CoalesceError): also a subclass of
    ``torch.cuda.OutOfMemoryError`` when torch is already imported."""
    torch = sys.modules.get("torch")
    torch_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    bases = (base,) if torch_oom is None or issubclass(base, torch_oom) else (base, torch_oom)
    if bases not in _classes:
        _classes[bases] = type(
            "OutOfMemoryError",
            bases,
            {"__doc__": "coalesce could not allocate: the message says why, with figures.",
             "__module__": "coalesce_torch"},
        )
    return _classes[bases]
