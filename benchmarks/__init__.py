"""Suites, runner, tracking, leaderboards, CLI and the synthetic driving world."""
