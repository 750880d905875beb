"""Probes on frozen features: linear heads trained on cached features, and closed-form few-shot.

Modules: :mod:`settings` (the ``probe`` config node, one dataclass per task), :mod:`features`
(fingerprints and the feature cache), :mod:`extract` (one pass of the frozen network, gathered over
DDP ranks), :mod:`linear` (the linear probe) and :mod:`ridge` (the pure few-shot solver).
"""
