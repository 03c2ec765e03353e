"""Part 3: the notebook lab (lab.ipynb)."""
