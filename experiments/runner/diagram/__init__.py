"""The routing diagram (experiments/routing_diagram.py): `drawing` draws
it from arrays, `figure` computes them from a trained layer."""
