"""What an operator sees of a running cluster: Flower's view of each task, and more."""
