"""The engine oracle: a recorded mixed workload whose every output is kept byte for byte."""
