"""dva's own small default model: a tiny latent diffusion model trained on phantoms by dva's own commands.

``make tiny-model`` runs :mod:`dva.tinymodel.build`: phantoms (``dva phantoms``), a small VAE
(:mod:`dva.tinymodel.vae`), a base model folder with a seeded random UNet and the frozen MiniLM encoder
(:mod:`dva.tinymodel.base`), then ``dva finetune --entry tiny-phantom``.
"""
