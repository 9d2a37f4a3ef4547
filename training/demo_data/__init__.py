"""Built-in demo dataset in the MVTec AD folder layout, made from scikit-image's texture photos.

The whole toolchain (training, export, serving) can be exercised without downloading anything: one of three
texture photographs that ship inside scikit-image becomes a small anomaly-detection dataset with exactly the
folder layout of MVTec AD, synthetic defects with exact masks and an explicit ``validation/`` folder.

* :mod:`~training.demo_data.defects`: rendering good images and the defects.
* :mod:`~training.demo_data.dataset`: the versioned, atomic dataset writer, :func:`write_demo_dataset`.
* :mod:`~training.demo_data.cli`: ``kd-demo-data`` (also ``python -m training.demo_data``).
"""

from training.demo_data.cli import main
from training.demo_data.dataset import MANIFEST_NAME, write_demo_dataset
from training.demo_data.defects import DEFECT_TYPES, DEMO_CATEGORIES

__all__ = ["DEFECT_TYPES", "DEMO_CATEGORIES", "MANIFEST_NAME", "main", "write_demo_dataset"]
