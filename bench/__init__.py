"""`make bench` (python -m bench): speed and equivalence checks, run from the repository root.

Sections, in order: training + sampling speed with the diffusers comparison
(bench/training_sampling.py), then the autograder's timing (bench/grading.py) when present.
"""
