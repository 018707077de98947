"""The HTTP routes, one router per area; each route only adapts HTTP to ``service.handler``."""
