"""The adaptive KL coefficient of the KL-penalty policy gradient (the ``ppo_kl`` baseline): the
rule of Schulman et al. 2017 ("Proximal Policy Optimization Algorithms", sec. 4), written once."""

from __future__ import annotations

#: The band around the target inside which the coefficient stays (the paper's 1.5) and the
#: factor it moves by outside it (the paper's 2).
KL_BAND = 1.5
KL_STEP = 2.0


def adapt_kl_beta(beta: float, kl: float, target: float) -> float:
    """The KL coefficient after an update whose mean KL(pi_old || pi_new) was ``kl`` (nats per
    state): halved if ``kl < target / 1.5``, doubled if ``kl > target * 1.5``, else unchanged (the
    band's edges themselves keep it). A NaN ``kl`` keeps ``beta`` (no evidence either way).
    Raises ValueError for a non-positive ``beta`` or ``target``."""
    if not beta > 0 or not target > 0:
        raise ValueError(f"kl_beta and kl_target must be > 0, got {beta} and {target}")
    if kl < target / KL_BAND:
        return beta / KL_STEP
    if kl > target * KL_BAND:
        return beta * KL_STEP
    return beta
