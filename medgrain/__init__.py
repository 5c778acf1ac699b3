"""medgrain: medical vision-language pretraining at several text granularities."""
__version__ = "0.1.0"
