"""The two course networks, their ensemble, and the code that trains and checks them.

Importing this package needs only torch: training-only dependencies (torchvision, tqdm,
matplotlib) are imported by ``models.train`` and ``models.evaluate`` alone, so the
serving image can ship without them.
"""
