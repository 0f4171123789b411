"""RLlib adapters: ADPOConfig, ADPO, learner, RLModule, connectors."""
