"""Simulation in virtual time: the engine model, and calibration against published measurements."""
