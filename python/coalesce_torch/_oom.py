"""Out-of-memory errors that PyTorch code catches, with a fragmentation report.

``OutOfMemoryError`` is a ``CoalesceError``; once torch is imported it is also a
``torch.cuda.OutOfMemoryError`` (``except torch.cuda.OutOfMemoryError`` catches it), built
lazily so importing coalesce_torch never imports torch.
"""

import sys


def _mib(n):
    return f"{n / (1 << 20):.2f} MiB"


def fragmentation(requested, stats):
    """The report PyTorch issue #29554 asks for: requested, reserved, live, the largest free
    block, and the share of reserved memory that is free but unusable for this request (all
    free memory when no free block is large enough, else none), with the cause it implies.

    The largest free block is capped at the free bytes: a policy may count unbacked address
    space in its free blocks, which is not reserved memory."""
    reserved, live = stats["reserved_bytes"], stats["allocated_bytes"]
    free = max(0, reserved - live)
    largest = min(stats["largest_free_block"], free)
    unusable = free if largest < requested else 0
    share = 100.0 * unusable / reserved if reserved else 0.0
    if unusable and free >= requested:
        cause = "fragmentation: enough is free in total, but no free block is large enough"
    else:
        cause = "not fragmentation: the free memory is less than the request"
    return (
        f"requested {_mib(requested)}, reserved {_mib(reserved)}, live {_mib(live)}, "
        f"largest free block {_mib(largest)}; {share:.1f}% of reserved memory "
        f"({_mib(unusable)}) is free but unusable for this request ({cause})"
    )


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
