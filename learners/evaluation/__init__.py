"""The evaluation harness: prequential scoring, replays, k-shot, comparisons, detector evaluation.

It sits above the learning core (it drives strategies over recorded or
synthetic streams); the core never imports it, and neither does the runtime.
"""
