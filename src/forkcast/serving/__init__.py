"""Serving: the request contract, the BentoML service, its log, the bento, deployments and smoke tests."""
