"""Inference beyond one forward: the continuous depth-wise batching engine and the live runner.

    from mor.inference.engine import Engine
"""
