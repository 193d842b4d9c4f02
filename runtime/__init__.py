"""edgedelta.runtime"""
