"""Real-image benchmarks that need no download, written to disk as a user's image-caption files.

- :mod:`datamodules.captioned.digits`: scikit-learn's handwritten digits with English and Chinese
  captions (csv + PNG folder, and parquet); :class:`DigitsFiles` builds them for a datamodule.

``python -m datamodules.captioned --out data/digits`` writes them by hand.
"""

from datamodules.captioned.digits import DigitsFiles, build_digits

__all__ = ["DigitsFiles", "build_digits"]
