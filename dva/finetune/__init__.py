"""Fine-tuning: strategies that turn a base model and a labelled dataset into a dva model folder.

``trainer`` runs every strategy (checks, accelerate, the steps, checkpoints and resuming, the output), reading
``data`` (images, caches, per-step seeds), ``loss`` (the seeded denoising loss), ``checkpoints``, ``prior``,
``safety``, ``validation`` and ``output``; ``config`` is the run's settings (generated from the settings schema)
and ``state`` what a run holds. ``strategy`` is the contract a strategy implements; ``dreambooth``, ``lora`` and
``textual_inversion`` are the built-in ones (registered in ``dva.plugins.finetuners`` with their options).
"""
