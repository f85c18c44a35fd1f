"""Fine-tuning: strategies (DreamBooth, ...) that turn a base model and a labelled dataset into a dva model folder."""
