"""The training methods a job picks by name: KD losses (``losses.LOSSES``), optimisers and schedules
(``optim.OPTIMIZERS``, ``optim.SCHEDULES``). Below the checks, which look entries up before Ray starts, and the
distill stage, which trains with them."""
