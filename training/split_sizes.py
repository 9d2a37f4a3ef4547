"""How many images of one folder go to validation: the rule both the splitter and the demo writer follow.

Kept apart from :mod:`training.data` (which needs torch) so the demo dataset writer, a plain numpy/OpenCV
program, uses the very same rule without importing torch.
"""

from __future__ import annotations


def validation_count(n: int, fraction: float) -> int:
    """How many of a folder's ``n`` evaluation images go to validation; the rest are test.

    ``round(n * fraction)`` (Python rounding), then at least one image on each side when ``n >= 2`` and the
    fraction is positive; a lone image (``n == 1``) goes to test.

    Args:
        n: Images in the folder (``good`` or one defect type).
        fraction: The validation share, in ``[0, 1)``.

    Returns:
        The validation count, ``0 <= count < n`` for ``n >= 1``.
    """
    n_val = round(n * fraction)
    if n >= 2 and fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    return n_val
