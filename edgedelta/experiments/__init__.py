"""Experiments that drive the library: `compare` (compare.py) builds DeltaLLM and the pruning
baselines at one budget, heals and evaluates them all alike. The library code it drives
(delta, baselines, distill, evaluation) never imports from here."""
