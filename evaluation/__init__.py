"""Evaluation of checkpoints: the Best-of-N-against-tuned comparison (`bon eval compare`), its report and plots.

It may import training, models, loadtest and world; none of them imports it.
"""
