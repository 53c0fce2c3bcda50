"""The K-FAC defaults: the one place `kfac.precondition`, `kfac.curvature` and the submissions
take them from (the values the tuned submissions use)."""

DAMPING = 1e-3
EMA_DECAY = 0.95
COV_UPDATE_EVERY = 1  # T_cov: statistics on every step.
INVERSE_UPDATE_EVERY = 10  # T_inv.
# Statistics and inverses on every one of the first steps: the ViT's zero-initialised head makes
# the step-0 curvature of every other layer zero, and with T_inv = 10 its `1 / damping` inverse
# would scale the next nine updates (measured: divergence within 4 steps on imagenet_vit small).
WARM_START_STEPS = 10
INVERSE_METHOD = 'eigh'
FLAVOUR = 'reduce'
FISHER_TYPE = 'mc'
NUM_SAMPLES = 1
MAX_FACTOR_DIM = 4096
FALLBACK = 'diagonal'
