"""Training one network: the recipe (``recipe``), the loop that fits it (``loop``) and what is
written about the result (``report``). ``python -m models.train`` is the command over them.
"""
