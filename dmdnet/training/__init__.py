"""How DMDNet learns: the trainer, losses, data (synthetic and real pairs), validation,
calibration, distributed runs and the tools that start or average weights."""
