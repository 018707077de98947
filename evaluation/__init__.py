"""Real-world evaluation: MNIST digits rendered the ways people send them, scored over HTTP."""
