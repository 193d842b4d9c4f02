"""edgedelta.devices"""
