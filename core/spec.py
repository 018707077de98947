"""What every served model shares, importable without torch: names, input and normalisation.

The HTTP side of the service (which never imports torch) validates model names and
describes inputs with these; ``models.registry`` builds the networks behind them.
"""

__all__ = ["ARCHITECTURE_NAMES", "CLASSES", "ENSEMBLE", "INPUT_SHAPE", "MNIST_MEAN", "MNIST_STD", "SERVED_MODELS"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
INPUT_SHAPE = (1, 28, 28)
CLASSES = tuple(range(10))
ARCHITECTURE_NAMES = ("inception", "resnet")
ENSEMBLE = "ensemble"
SERVED_MODELS = (*ARCHITECTURE_NAMES, ENSEMBLE)
