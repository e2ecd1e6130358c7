"""Training and evaluation of canopy height models on chip cubes."""
