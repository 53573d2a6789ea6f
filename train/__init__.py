"""Training, calibration, evaluation and export scripts (``python -m train.<script> --help``).

Scripts only: the tensor work lives in the ``ichdemo`` library (STYLE.md point 1).
"""
