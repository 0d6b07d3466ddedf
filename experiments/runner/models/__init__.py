"""Networks trained beside the capsule layer: the autoencoder front end and
the Fréchet classifier."""
