"""edgedelta.export"""
