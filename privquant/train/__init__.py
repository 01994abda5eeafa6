"""Training outside the private-inference path: data-parallel (DDP) training with gradient
compression (:mod:`privquant.train.gradcomp`) and its worker/launcher (:mod:`privquant.train.ddp`).

Nothing here imports the two-party protocols (``privquant.protocols``) or CrypTen; FP32
single-process training stays in :mod:`privquant.models.train`.
"""
