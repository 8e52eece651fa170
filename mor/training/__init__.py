"""Training: presets (the shipped recipes), the resumable training loop and model cards.

    mor train --preset mor-ec-r3 --out checkpoints/mor-ec-r3 --data data
"""
