"""Task metrics, computed with the reference libraries (scikit-learn here)."""
