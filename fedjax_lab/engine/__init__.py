"""Local training, execution strategies over the client axis, and evaluation."""
