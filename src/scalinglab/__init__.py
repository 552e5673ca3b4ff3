"""scalinglab: make the data-versus-parameters question of LM pretraining measurable."""

__version__ = "0.1.0"
